"""Who owns a SQLite database: the owner row's heartbeat, checked on open.

The ``flock`` on ``<db>.lock`` dies with its owner, but a removed lock file
lets a second process take a fresh lock on a new file. So an opener also
reads the owner row: while another owner's heartbeat is fresh and that owner
may be alive (a live pid on this host, or any owner on another host), the
database is refused. A clean close zeroes the heartbeat; a dead owner's
heartbeat goes stale after ``stale_after`` seconds.
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
import time

from .._errors import StoreError

__all__ = ["check_owner"]


def check_owner(conn: sqlite3.Connection, url: str, stale_after: float) -> None:
    """Raise ``StoreError`` if another live owner holds ``conn``'s database."""
    row = conn.execute("SELECT pid, host, since, heartbeat_at FROM owner WHERE id = 1").fetchone()
    if row is None:
        return
    pid, host, since, beat = row
    age = time.time() - beat
    if beat <= 0 or age >= stale_after or not _may_be_alive(pid, host):
        return
    started = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat(timespec="seconds")
    raise StoreError(
        f"{url} is owned by another process (pid {pid} on host {host} since {started}, "
        f"heartbeat {age:.1f}s ago); stop it first or use another database file"
    )


def _may_be_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # nothing to ask: trust its heartbeat
    if pid == os.getpid():
        return False  # this process: the flock already decided between its stores
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
