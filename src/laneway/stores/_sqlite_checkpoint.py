"""The SQLite store's checkpointer: copies the WAL into the database off the commit path.

SQLite's automatic checkpoint runs inside whichever commit crosses the WAL
size limit: a thousand pages copied and two fsyncs, so every few dozen group
commits one of them (and every submit waiting on it) took several milliseconds
longer. The writer connection turns automatic checkpoints off and nudges this
thread after its commits; it runs a ``PASSIVE`` checkpoint on its own
connection, which never blocks the writer or the readers, and holds no GIL
while SQLite works.

A checkpoint beside a busy writer never quite catches up with it (new frames
land while it copies), and SQLite restarts the WAL from its beginning only
once every frame is copied. So every ``COMMITS_PER_RESTART`` commits the
writer, between two transactions, copies the frames committed since the last
background checkpoint itself: the WAL file stays bounded, and the one commit
in hundreds that pays for it pays two fsyncs, not a thousand-page copy.
(Finishing after every background checkpoint instead cost those fsyncs every
few dozen commits and halved throughput.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

__all__ = ["Checkpointer"]

log = logging.getLogger("laneway.store")

#: Commits between background checkpoints: a group commit writes a few dozen
#: pages, so this copies about as much as SQLite's default 1,000-page checkpoint.
COMMITS_PER_CHECKPOINT = 32
#: Commits between the writer's own checkpoints, which let the WAL restart: the
#: WAL file holds at most about this many commits.
COMMITS_PER_RESTART = 8 * COMMITS_PER_CHECKPOINT


class Checkpointer:
    """One thread and one connection, checkpointing after every few commits."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._wake = threading.Event()
        self._stopping = False
        self._commits = 0
        self._since_restart = 0
        # Set by the writer while it waits to restart the WAL: the background thread
        # starts no new checkpoint, or under load the two would collide forever.
        self._restart_wanted = False
        self._busy = False  # a background checkpoint is running
        self.checkpoints = 0
        self._thread = threading.Thread(target=self._run, name="laneway-sqlite-wal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def committed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer thread after each commit, outside any transaction."""
        self._since_restart += 1
        if self._since_restart >= COMMITS_PER_RESTART:
            self._restart_wanted = True
            if not self._busy:  # else the next commit tries, once it is done
                self._finish(conn)
        self._commits += 1
        if self._commits >= COMMITS_PER_CHECKPOINT:
            self._commits = 0
            self._wake.set()

    def _finish(self, conn: sqlite3.Connection) -> None:
        # RESTART, not PASSIVE: it also waits (busy_timeout) for a checkpoint that
        # slipped in, so the next transaction is sure to start the WAL over.
        if self._checkpoint(conn, "RESTART"):
            self._since_restart = 0
            self._restart_wanted = False
        else:  # a reader in the way: try again a little later, not after every commit
            self._since_restart = COMMITS_PER_RESTART - COMMITS_PER_CHECKPOINT

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
                if not self._restart_wanted:
                    self._busy = True
                    try:
                        self._checkpoint(conn)
                    finally:
                        self._busy = False
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str = "PASSIVE") -> bool:
        """True if every frame is now in the database."""
        try:
            # fetchall, not fetchone: a statement left unfinished would keep a read
            # transaction open, and a reader on the WAL stops it from restarting.
            ((busy, frames, copied),) = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as exc:  # the next nudge tries again; commits go on meanwhile
            log.warning("store.checkpoint_failed: %s", exc, extra={"error": repr(exc)})
            return False
        self.checkpoints += 1
        return not busy and frames == copied
