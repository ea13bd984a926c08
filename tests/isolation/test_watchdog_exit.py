"""``exit_after``: a loop blocked that long ends the process with code 70 and the stack.

Crash-only recovery for task mode: a supervisor restarts the process and a
durable store resumes the work. Run in a real subprocess: it has to exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .._helpers import SRC

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import logging
    import sys
    import time

    from laneway import Laneway


    def stall_the_loop_for_good():
        time.sleep(60)  # synchronous: no timeout in this loop can preempt it


    async def main():
        lw = Laneway(watchdog_threshold=0.2, exit_after=1.0)

        @lw.handler("blocker")
        async def blocker(ctx, payload):
            stall_the_loop_for_good()

        async with lw:
            await lw.submit("s", "blocker")
            await asyncio.sleep(30)
        print("not reached")


    if __name__ == "__main__":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(main())
    """
)


def test_blocked_loop_exits_with_70_and_logs_the_blocking_stack(tmp_path: Path) -> None:
    script = tmp_path / "blocked.py"
    script.write_text(SCRIPT)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 70, proc.stderr
    assert "loop.blocked" in proc.stderr
    assert "stall_the_loop_for_good" in proc.stderr  # the blocking function, in the stack
    assert "not reached" not in proc.stdout
    assert elapsed < 20  # exit_after=1 s, not the 60 s sleep
