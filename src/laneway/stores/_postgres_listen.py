"""Wake-ups for a PostgreSQL node: LISTEN/NOTIFY as a hint, a jittered poll as the rule.

Every write transaction that made work runnable or appended events sends one
NOTIFY on the store's channel (``work`` and/or the sessions that got events;
see ``_postgres_writer.notify_payload``). A notification can be lost (the
LISTEN connection drops, the server restarts), so nothing may depend on it:
``Listener.wait()`` also returns after the poll interval (jittered, so nodes do
not poll in step), and a dropped connection is opened again in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .._errors import StoreError

__all__ = ["Listener", "Wakeup"]

log = logging.getLogger("laneway.store")

_RETRY_MAX = 5.0


@dataclass(slots=True)
class Wakeup:
    """What woke a waiter: notified work, sessions with new events, or just the poll."""

    work: bool = False
    sessions: set[str] = field(default_factory=set)
    all_sessions: bool = False  # too many sessions to list: look at every one
    polled: bool = False

    def add(self, payload: str) -> None:
        head, _, rest = payload.partition(" ")
        self.work = self.work or head == "work"
        if rest == "*":
            self.all_sessions = True
        elif rest:
            self.sessions.update(rest.split(" "))


class Listener:
    """One LISTEN connection, kept open; ``wait()`` for the next hint or poll."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        poll: float,
    ) -> None:
        self.channel = channel
        self.poll = poll
        self.reconnects = 0
        self.conn: asyncpg.Connection | None = None
        self._connect = connect
        self._pending = Wakeup()
        self._woken = asyncio.Event()
        self._closed = False
        self._reviving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()

    async def close(self) -> None:
        self._closed = True
        if self._reviving is not None:
            self._reviving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reviving
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.close(timeout=5)

    async def wait(self) -> Wakeup:
        """The hints gathered since the last call, waiting up to one jittered poll for one."""
        if not self._woken.is_set():
            timeout = self.poll * random.uniform(0.5, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout)
        got, self._pending = self._pending, Wakeup()
        got.polled = not self._woken.is_set()
        self._woken.clear()
        if self.conn is None or self.conn.is_closed():
            self._revive()
        return got

    # -- the connection ------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self.conn = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._pending.add(str(payload))
        self._woken.set()

    def _terminated(self, conn: Any) -> None:
        if conn is self.conn:
            self.conn = None
            self._revive()

    def _revive(self) -> None:
        if self._closed or (self._reviving is not None and not self._reviving.done()):
            return
        self._reviving = asyncio.get_running_loop().create_task(self._revive_loop())

    async def _revive_loop(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                await self._listen()
            except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("store.listen_failed: %s; polling until it is back", exc)
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX, delay * 2)
                continue
            self.reconnects += 1
            # Whatever was sent while we were away is lost: wake the waiter to look.
            self._pending.work = self._pending.all_sessions = True
            self._woken.set()
            return
