"""The chaos run (`laneway demo`): every failure at once, nothing lost.

Real time on purpose: the watchdog, the lag probe and the injected loop
blocks need a real clock, so this is one of the few slow tests.
"""

from __future__ import annotations

import time

import pytest

from laneway import Event, Laneway, Outcome
from laneway._chaos import _judge, _Observed, _plan, run_chaos
from laneway._core._runtime import Job
from laneway._types import JobState


@pytest.mark.slow
async def test_a_small_chaos_run_loses_nothing_and_recovers_from_every_fault() -> None:
    seen: list[tuple[int, int]] = []
    report = await run_chaos(
        sessions=40, messages=300, seed=7, progress=lambda d, t: seen.append((d, t))
    )
    assert report.ok, report.problems
    assert report.lost == 0
    assert report.duplicate_terminals == 0
    assert report.accepted == 300
    assert report.healthy_not_succeeded == 0
    terminal = report.succeeded + report.timed_out + report.failed + report.cancelled + report.dead
    assert terminal == report.accepted
    # The faults really happened and were survived, not skipped.
    assert report.injected
    assert report.timed_out_by_reason.get("idle", 0) > 0
    assert report.zombies_seen > 0
    assert report.retried > 0
    assert seen[0] == (0, 300)
    assert seen[-1] == (300, 300)
    labels = [label for label, _ in report.rows()]
    assert "lost (must be 0)" in labels
    assert "healthy latency p99" in labels


def _event(seq: int, job_id: str, kind: str, reason: str | None = None) -> Event:
    return Event(seq, "chaos-0000", job_id, kind, {"reason": reason}, time.time())


def test_the_judge_reports_lost_and_doubled_terminals() -> None:
    import random

    plan = _plan(random.Random(1), 1, 3)
    lw = Laneway()  # never started: only the handles' ids and sessions are read
    jobs = {i: Job(lw, i, "chaos-0000", "chaos") for i in ("a", "b", "c")}
    log = [
        _event(1, "a", "job.succeeded"),
        _event(2, "b", "job.timed_out", "idle"),
        _event(3, "b", "job.failed"),
    ]
    observed = _Observed(outcomes={"a": Outcome("a", JobState.FAILED)})
    report = _judge(plan, jobs, observed, log)
    assert report.lost == 1  # "c" never ended
    assert report.duplicate_terminals == 1  # "b" ended twice
    assert not report.ok
    assert any("disagree" in p for p in report.problems)  # "a": caller saw failed
