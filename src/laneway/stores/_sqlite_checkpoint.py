"""The SQLite store's checkpointer: copies the WAL into the database off the commit path.

SQLite's automatic checkpoint runs inside whichever commit crosses the WAL
size limit: a thousand pages copied and two fsyncs, so every few dozen group
commits one of them (and every submit waiting on it) took several milliseconds
longer. The writer connection turns automatic checkpoints off and nudges this
thread after its commits; it runs a ``PASSIVE`` checkpoint on its own
connection, which never blocks the writer or the readers, and holds no GIL
while SQLite works.

A checkpoint beside a busy writer cannot catch up with it (new frames land
while it copies), and SQLite only restarts the WAL from its beginning once
every frame is copied. So after each background checkpoint the writer, between
two transactions, copies the few frames committed meanwhile itself: cheap,
since the bulk and its fsync are done, and it keeps the WAL file bounded.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

__all__ = ["Checkpointer"]

log = logging.getLogger("laneway.store")

#: Commits between checkpoints: a group commit writes a few dozen pages, so this
#: keeps the WAL near SQLite's default limit of 1,000 pages.
COMMITS_PER_CHECKPOINT = 16
#: If the background checkpoints fall this far behind (a starved thread, long
#: reads pinning old frames), the writer checkpoints in line as SQLite would.
COMMITS_BEFORE_INLINE = 8 * COMMITS_PER_CHECKPOINT


class Checkpointer:
    """One thread and one connection, checkpointing after every few commits."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._wake = threading.Event()
        self._stopping = False
        self._commits = 0
        self._since_restart = 0
        self._caught_up = False  # a background checkpoint finished; the writer may finish it
        self.checkpoints = 0
        self._thread = threading.Thread(target=self._run, name="laneway-sqlite-wal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def committed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer thread after each commit, outside any transaction."""
        self._since_restart += 1
        if self._caught_up or self._since_restart >= COMMITS_BEFORE_INLINE:
            self._caught_up = False
            # Copies what landed since the background checkpoint, so the WAL restarts.
            if self._checkpoint(conn):
                self._since_restart = 0
        self._commits += 1
        if self._commits >= COMMITS_PER_CHECKPOINT:
            self._commits = 0
            self._wake.set()

    def stop(self) -> None:
        """Stop and wait (the last connection to close checkpoints what is left)."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            log.error("store.checkpoint_failed: %s", exc, extra={"error": repr(exc)})  # noqa: TRY400
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                self._caught_up = self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next nudge tries again; commits go on meanwhile
            log.warning("store.checkpoint_failed: %s", exc, extra={"error": repr(exc)})
            return False
        self.checkpoints += 1
        return True
