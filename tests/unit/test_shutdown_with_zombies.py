"""A zombie that swallows every cancellation must not keep the process from exiting."""

from __future__ import annotations

import textwrap

from .._helpers import run_python

SCRIPT = textwrap.dedent(
    """
    import asyncio
    from laneway import Laneway, Limits, Retry
    from laneway.testing import hang_ignoring_cancel

    async def main():
        lw = Laneway(limits=Limits(deadline=0.2, cancel_grace=0.1), retry=Retry(max_attempts=1))

        @lw.handler("h")
        async def h(ctx, payload):
            await hang_ignoring_cancel()   # swallows every cancel, forever

        async with lw:
            job = await lw.submit("a", "h")
            outcome = await job.wait()
            print(outcome.state.value, outcome.reason, len(lw.snapshot().zombies), flush=True)

    asyncio.run(main())
    print("exited", flush=True)
    """
)


def test_close_leaves_cancel_swallowing_zombies_behind() -> None:
    proc = run_python(SCRIPT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["timed_out", "deadline", "1", "exited"]
    assert "still running at close" in proc.stderr
