"""Endings laneway did not decide, with real processes on a real SQLite file: a
poison job that kills the process beside innocents, Ctrl-C without ``close()``,
a handler raising ``SystemExit`` beside its neighbours."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .._helpers import SRC, TERMINAL_KINDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WORKER = Path(__file__).with_name("_endings_worker.py")


def run(db: Path, mode: str, *first: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), mode, *first],
        env={**os.environ, "PYTHONPATH": SRC, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def jobs(db: Path) -> dict[str, tuple[str, str | None, int, int]]:
    """session -> (state, reason, attempts, lost)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session, state, reason, attempts, lost FROM jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def kinds(db: Path) -> Counter[tuple[str, str]]:
    """(session, kind) -> how many such events."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session, kind FROM events").fetchall()
    return Counter((r[0], r[1]) for r in rows)


def test_a_poison_job_is_quarantined_alone_and_its_innocent_neighbours_succeed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "poison.db"
    codes = []
    proc = run(db, "poison", "first")
    for _ in range(8):  # restart it until it stops crashing
        proc.communicate(timeout=60)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
        proc = run(db, "poison")
    print("exit codes of the runs:", codes)
    assert codes[-1] == 0, codes
    assert set(codes[:-1]) == {3}
    final = jobs(db)
    assert final["culprit"][:2] == ("dead", "lost")
    assert final["culprit"][3] == 2  # poison_after=2 crashes, both its own
    for i in range(4):
        state, _reason, attempts, lost = final[f"innocent{i}"]
        assert (state, attempts, lost) == ("succeeded", 1, 0), final
    seen = kinds(db)
    for session in final:
        assert sum(seen[(session, k)] for k in TERMINAL_KINDS) == 1


def test_ctrl_c_without_close_leaves_no_job_cancelled(tmp_path: Path) -> None:
    db = tmp_path / "interrupt.db"
    proc = run(db, "interrupt", "first")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0  # KeyboardInterrupt
    # Left for recovery or given back as a shutdown: never decided by the interrupt.
    assert all(j[0] in ("queued", "running") for j in jobs(db).values()), jobs(db)

    again = run(db, "interrupt")
    again.communicate(timeout=60)
    assert again.returncode == 0
    final = jobs(db)
    # Nobody stopped them: they ran to the end after the restart, not counted twice.
    assert final == {f"n{i}": ("succeeded", None, 1, 0) for i in range(3)}
    assert not [k for k in kinds(db) if k[1] == "job.cancelled"]


def test_a_handler_raising_system_exit_fails_alone_and_its_neighbours_run_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "exit.db"
    proc = run(db, "exit", "first")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    after = jobs(db)
    assert after["quitter"][:3] == ("failed", "SystemExit", 1)
    assert all(after[f"n{i}"][0] in ("queued", "running") for i in range(3)), after

    again = run(db, "exit")
    again.communicate(timeout=60)
    assert again.returncode == 0
    final = jobs(db)
    assert final["quitter"][:3] == ("failed", "SystemExit", 1)
    for i in range(3):
        assert final[f"n{i}"] == ("succeeded", None, 1, 0), final
    assert not [k for k in kinds(db) if k[1] == "job.cancelled"]
