"""Real children and threads: ``run_process`` groups die with their attempt
(guarantee 7), and an abandoned ``run_sync`` thread is a zombie that holds no slot.

These run in real time (real processes and threads cannot be fast-forwarded).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from laneway import JobState, Laneway, Limits, Retry, TurnContext

from ..conftest import MakeLaneway

# A shell (the child) that starts ``sleep 1000`` (the grandchild) and writes
# both pids to $1. With "wait" it stays until killed; without, it exits at once
# and leaves the grandchild behind in its process group.
FAMILY = 'sleep 1000 >/dev/null 2>&1 & echo $! > "$1"; echo $$ >> "$1"; echo started; {wait}'


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read_pids(path: Path) -> list[int] | None:
    if path.exists() and len(lines := path.read_text().split()) == 2:
        return [int(p) for p in lines]
    return None


async def pids_in(path: Path) -> list[int]:
    for _ in range(500):
        if pids := _read_pids(path):
            return pids
        await asyncio.sleep(0.01)
    raise AssertionError("the child never wrote its pids")


async def all_gone(pids: list[int], within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


def _family(make_laneway: MakeLaneway, pidfile: Path) -> Laneway:
    lw = make_laneway(
        limits=Limits(deadline=30, idle=None, cancel_grace=1.0), retry=Retry(max_attempts=1)
    )

    @lw.handler("cli", limits=Limits(deadline=0.5))
    async def cli_deadline(ctx: TurnContext, payload: str) -> int:
        return await cli(ctx, payload)

    @lw.handler("cli-stop")
    async def cli(ctx: TurnContext, payload: str) -> int:
        script = FAMILY.format(wait="wait" if payload == "wait" else "exit 0")
        result = await ctx.run_process("sh", "-c", script, "sh", str(pidfile))
        assert result.stdout == b"started\n"
        return result.returncode

    @lw.handler("cli-stubborn")
    async def stubborn(ctx: TurnContext, payload: str) -> int:
        # The process call is shielded and the stop's cancel swallowed: only
        # the runtime killing the group when it abandons the attempt ends it.
        # (A second cancel, the test loop's teardown, is honoured.)
        call = asyncio.ensure_future(cli(ctx, payload))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            return await asyncio.shield(call)

    return lw


@pytest.mark.parametrize("ending", ["stop", "stop-late", "stop-stubborn", "deadline", "success"])
async def test_the_process_group_dies_with_the_attempt(
    make_laneway: MakeLaneway, tmp_path: Path, ending: str
) -> None:
    pidfile = tmp_path / "pids"
    lw = _family(make_laneway, pidfile)
    await lw.start()
    handler = {"deadline": "cli", "stop-stubborn": "cli-stubborn"}.get(ending, "cli-stop")
    job = await lw.submit("alice", handler, "exit" if ending == "success" else "wait")
    grandchild, child = await pids_in(pidfile)
    if ending.startswith("stop"):
        # "stop" lands at once, usually while create_subprocess_exec is still
        # connecting the pipes (a cancelled spawn kills only the leader).
        if ending == "stop-late":  # the spawn has surely returned: run_process is reading
            await asyncio.sleep(0.3)
        assert alive(child)
        assert alive(grandchild)
        t0 = time.monotonic()
        result = await lw.stop("alice")
        assert time.monotonic() - t0 < 1.0 + 0.5  # within the cancel grace (1 s)
        assert result.cancelled == [job.id]
    outcome = await job.wait()
    expected = {
        "stop": JobState.CANCELLED,
        "stop-late": JobState.CANCELLED,
        "stop-stubborn": JobState.CANCELLED,
        "deadline": JobState.TIMED_OUT,
        "success": JobState.SUCCEEDED,
    }
    assert outcome.state is expected[ending]
    # The child and the grandchild it left in its group are both gone.
    assert await all_gone([child, grandchild])
    for _ in range(50):  # the stubborn task ends once its process is gone
        if not lw.snapshot().zombies:
            break
        await asyncio.sleep(0.02)
    assert lw.snapshot().zombies == []


async def test_an_abandoned_thread_is_a_zombie_that_holds_no_slot(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(
        limits=Limits(deadline=0.2, idle=None, cancel_grace=0.1), retry=Retry(max_attempts=1)
    )
    started: dict[str, float] = {}

    @lw.handler("sync")
    async def sync(ctx: TurnContext, payload: float) -> str:
        started[ctx.job_id] = time.monotonic()
        await ctx.run_sync(time.sleep, payload)
        return "done"

    await lw.start()
    t0 = time.monotonic()
    stuck = await lw.submit("alice", "sync", 1.5)
    after = await lw.submit("alice", "sync", 0.0)
    outcome = await stuck.wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "deadline")
    assert await after.result() == "done"
    # The next turn ran while the abandoned thread was still sleeping ...
    assert started[after.id] - t0 < 1.0
    zombies = lw.snapshot().zombies
    assert [(z.job_id, z.kind) for z in zombies] == [(stuck.id, "thread")]
    assert lw.snapshot().jobs_running == 0
    # ... and the zombie is listed until the thread really returns.
    while lw.snapshot().zombies and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.05)
    assert lw.snapshot().zombies == []
    assert time.monotonic() - t0 >= 1.5
