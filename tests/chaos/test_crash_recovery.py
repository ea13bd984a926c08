"""Crash tests with real processes: a worker on a SQLite file is SIGKILLed at
random moments and restarted; afterwards every accepted job is terminal exactly
once, nothing that succeeded ran again, and each session kept its order. A
handler that kills its own process ends ``dead`` after ``poison_after`` restarts.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .._helpers import SRC, TERMINAL_KINDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

WORKER = Path(__file__).with_name("_worker.py")


def start_worker(db: Path, log: Path, mode: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), str(log), mode],
        env={**os.environ, "PYTHONPATH": SRC, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"worker said {line!r} (exit code {proc.poll()})"


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    _out, _ = proc.communicate(timeout=timeout)
    return proc.returncode


@dataclass
class Log:
    """What the database says happened, per job and per session."""

    state: dict[str, str] = field(default_factory=dict)
    reason: dict[str, str | None] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    events: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))


def read_db(db: Path) -> Log:
    log = Log()
    conn = sqlite3.connect(db)
    try:
        for job_id, state, reason, lost in conn.execute("SELECT id, state, reason, lost FROM jobs"):
            log.state[job_id] = state
            log.reason[job_id] = reason
            log.lost[job_id] = lost
        for job_id, seq, kind in conn.execute(
            "SELECT job_id, seq, kind FROM events ORDER BY session, seq"
        ):
            log.events[job_id].append((seq, kind))
    finally:
        conn.close()
    return log


def submitted(log_path: Path) -> dict[tuple[str, int], str]:
    """(session, n) -> job id, as the worker logged after each submit returned."""
    seen: dict[tuple[str, int], str] = {}
    for line in log_path.read_text().splitlines():
        job_id, session, n = line.split()
        key = (session, int(n))
        # A re-submit after a crash (same idempotency key) got the same job.
        assert seen.setdefault(key, job_id) == job_id, f"{key} got two jobs"
    return seen


def check_exactly_once(db_log: Log, jobs: dict[tuple[str, int], str]) -> None:
    for key, job_id in jobs.items():
        events = db_log.events[job_id]
        terminal = [seq for seq, kind in events if kind in TERMINAL_KINDS]
        assert len(terminal) == 1, f"{key} {job_id}: terminal events {terminal}"
        # Nothing of the job happened after its terminal event: a committed
        # success never ran again.
        assert max(seq for seq, _ in events) == terminal[0], f"{key} ran after it ended"
        starts = sum(kind == "job.started" for _, kind in events)
        runs = sum(kind == "ran" for _, kind in events)
        assert starts >= 1
        assert runs <= starts


def check_session_order(db_log: Log, jobs: dict[tuple[str, int], str]) -> None:
    by_session: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for (session, n), job_id in jobs.items():
        by_session[session].append((n, job_id))
    for session, numbered in by_session.items():
        numbered.sort()
        for (n, prev), (_, nxt) in itertools.pairwise(numbered):
            ended = next(seq for seq, kind in db_log.events[prev] if kind in TERMINAL_KINDS)
            began = min(seq for seq, kind in db_log.events[nxt] if kind == "job.started")
            assert ended < began, f"{session}: job {n + 1} started before job {n} ended"


# The tests are async only to keep the suite's event loops tidy (looptime
# opens, and never closes, a loop for every sync test); the work is blocking.


async def test_sigkill_ten_times_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    sigkill_ten_times(tmp_path)


def sigkill_ten_times(tmp_path: Path) -> None:
    db, log = tmp_path / "chaos.db", tmp_path / "submitted.log"
    rng = random.Random()
    started = time.monotonic()
    for _ in range(10):
        proc = start_worker(db, log, "chaos")
        wait_ready(proc)
        time.sleep(rng.uniform(0.2, 0.8))
        assert proc.poll() is None, "the worker finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert finish(proc) == -signal.SIGKILL
    proc = start_worker(db, log, "chaos")
    wait_ready(proc)
    assert finish(proc) == 0
    elapsed = time.monotonic() - started

    jobs = submitted(log)
    assert len(jobs) == 20 * 60
    db_log = read_db(db)
    assert {db_log.state[j] for j in jobs.values()} == {"succeeded"}
    check_exactly_once(db_log, jobs)
    check_session_order(db_log, jobs)
    # The kills really landed mid-work: some turns were lost and run again.
    assert sum(db_log.lost.values()) > 0
    assert elapsed < 120


async def test_a_handler_that_kills_its_process_ends_dead_after_poison_after(
    tmp_path: Path,
) -> None:
    poison_crash_loop(tmp_path)


def poison_crash_loop(tmp_path: Path) -> None:
    db, log = tmp_path / "poison.db", tmp_path / "submitted.log"
    env = {
        "CHAOS_SESSIONS": "5",
        "CHAOS_JOBS": "20",
        "CHAOS_WORK_MIN": "0.005",
        "CHAOS_WORK_MAX": "0.02",
        "CHAOS_POISON_AFTER": "3",
    }
    deaths = 0
    for _ in range(6):
        proc = start_worker(db, log, "poison", **env)
        wait_ready(proc)
        code = finish(proc)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        deaths += 1
    # Three crashes of its own; one more if it had company at the first (then
    # nobody was blamed and it ran alone among suspects from there on).
    assert deaths in (3, 4)

    jobs = submitted(log)
    poison = jobs.pop(("poison", 0))
    db_log = read_db(db)
    assert (db_log.state[poison], db_log.reason[poison], db_log.lost[poison]) == ("dead", "lost", 3)
    assert len(jobs) == 5 * 20
    assert {db_log.state[j] for j in jobs.values()} == {"succeeded"}
    check_exactly_once(db_log, {**jobs, ("poison", 0): poison})
    check_session_order(db_log, jobs)
