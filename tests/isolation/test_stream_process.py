"""``ctx.stream_process`` and the cli model with ``isolation="process"``: the
same guarantees as in task mode, with the worker (and its whole session)
killed at a limit or a stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from laneway import Event, JobState, Laneway, Limits, ProcessPool, Retry
from laneway.testing import fake_agent_cli

from .._helpers import all_gone, gone
from ..conftest import MakeLaneway
from . import handlers

pytestmark = pytest.mark.slow

IDLE = 1.0
GRACE = 1.0
FAMILY = 'sleep 1000 & echo "$$ $!" > "$1"; echo first; wait'


async def _laneway(make_laneway: MakeLaneway, idle: float = IDLE) -> Laneway:
    lw = make_laneway(
        process_pool=ProcessPool(size=1),
        limits=Limits(deadline=60, idle=idle, cancel_grace=GRACE),
        retry=Retry(max_attempts=3, backoff=0.05),
    )
    lw.handler("cli", isolation="process")(handlers.agent_cli)
    lw.handler("lines", isolation="process")(handlers.stream_lines)
    await lw.start()
    return lw


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"text": text, "command": fake_agent_cli(), "format": "text", **extra}


async def _pids(lw: Laneway, session: str, job_id: str) -> list[int]:
    """The fake CLI's pid and its child's, from the two lines it streams before hanging."""
    pids: list[int] = []
    async with asyncio.timeout(15):
        async for event in lw.events(session):
            if event.job_id == job_id and event.kind == "delta":
                pids.append(int(event.data["text"].split()[1]))
                if len(pids) == 2:
                    return pids
    raise AssertionError("unreachable")


async def test_a_silent_cli_in_a_worker_times_out_idle_and_dies(make_laneway: MakeLaneway) -> None:
    lw = await _laneway(make_laneway)
    stuck = await lw.submit("alice", "cli", _text("/hang"))
    following = await lw.submit("alice", "cli", _text("next one"))
    pids = await _pids(lw, "alice", stuck.id)
    assert not any(gone(p) for p in pids)
    t_last = time.monotonic()
    outcome = await stuck.wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (JobState.TIMED_OUT, "idle", 1)
    assert time.monotonic() - t_last < IDLE + GRACE + 1.0
    assert await all_gone(pids, within=GRACE)
    assert await following.result() == "next\none"


async def test_stop_ends_a_silent_cli_in_a_worker_within_the_grace(
    make_laneway: MakeLaneway,
) -> None:
    lw = await _laneway(make_laneway, idle=60.0)
    stuck = await lw.submit("alice", "cli", _text("/hang"))
    pids = await _pids(lw, "alice", stuck.id)
    t0 = time.monotonic()
    assert (await lw.stop("alice")).cancelled == [stuck.id]
    assert time.monotonic() - t0 < GRACE + 0.5
    assert (await stuck.wait()).state is JobState.CANCELLED
    assert await all_gone(pids, within=GRACE)
    assert await (await lw.submit("alice", "cli", _text("after"))).result() == "after"


async def test_lines_bounds_and_failures_match_task_mode(make_laneway: MakeLaneway) -> None:
    lw = await _laneway(make_laneway, idle=0.5)
    steady = {"argv": ["sh", "-c", "for i in $(seq 8); do echo $i; sleep 0.2; done"]}
    long_line = {"argv": ["sh", "-c", "echo abcdefghij; echo end"], "max_line": 4}
    failing = {"argv": ["sh", "-c", "echo out; echo 'fatal: no' >&2; exit 7"]}
    got = [
        await (await lw.submit("s", "lines", {"max_line": 65536, "take": None, **p})).result()
        for p in (steady, long_line, failing)
    ]
    assert got == [
        {"lines": [str(i) for i in range(1, 9)], "returncode": 0},  # 1.6 s, idle 0.5: healthy
        {"lines": ["abcd", "efgh", "ij", "end"], "returncode": 0},
        {"lines": ["out"], "returncode": 7, "stderr": "fatal: no\n"},
    ]
    outcome = await (await lw.submit("s", "cli", _text("/fail 3"))).wait()
    assert (outcome.state, outcome.reason, outcome.attempts) == (
        JobState.FAILED,
        "ProcessFailed",
        1,
    )
    assert outcome.error is not None
    assert outcome.error.endswith("error: the model refused (code 3)")


async def test_breaking_off_in_a_worker_kills_the_group(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    lw = await _laneway(make_laneway)
    pidfile = tmp_path / "pids"
    payload = {"argv": ["sh", "-c", FAMILY, "sh", str(pidfile)], "max_line": 100, "take": 1}
    job = await lw.submit("s", "lines", payload)
    assert await job.result() == {"lines": ["first"], "returncode": 0}
    # The pids were written before the line: the worker is alive and idle now,
    # so only the stream's own cleanup could have killed these.
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    assert await all_gone(pids, within=3.0)


async def test_the_cli_session_is_resumed_in_a_worker(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    lw = await _laneway(make_laneway)
    model = {
        "command": fake_agent_cli("stream-json", state=tmp_path),
        "format": "stream-json",
        "resume": "--resume {session_id}",
    }
    results = [await (await lw.submit("a", "cli", {"text": t, **model})).result() for t in "xyz"]
    assert results == ["turn 1: x", "turn 2: y", "turn 3: z"]
    messages = [e.data for e in await _log(lw, "a") if e.kind == "message"]
    assert len({m["session_id"] for m in messages}) == 1
    assert [e.kind for e in await _log(lw, "a")].count("tool") == 6


async def _log(lw: Laneway, session: str) -> list[Event]:
    return await lw.store.read_events(session, limit=1000)
