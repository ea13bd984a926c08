"""Zombies and reaping: what an ended attempt left running, until it is gone.

An attempt's slots are free the moment it ends; what it started may not be.
A task that ignored its cancellation, a ``run_sync`` thread that cannot be
stopped, a process group being killed: each is a ``Zombie`` in the snapshot
until it finishes. Process groups are killed here (TERM, grace, KILL) on
background tasks that need no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from concurrent.futures import Future as ConcurrentFuture
from functools import partial
from typing import Any

from .._types import Zombie
from ._attempt import Attempt
from ._proc import kill_group

__all__ = ["Reaper"]

log = logging.getLogger("laneway.runtime")


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Zombies by the id of what they track; ``age_s`` holds the loop time they began.
        self.zombies: dict[int, Zombie] = {}
        self._abandoned: set[Attempt] = set()
        self.background: set[asyncio.Task[Any]] = set()

    def zombies_at(self, now: float) -> list[Zombie]:
        return [
            Zombie(z.job_id, z.session, z.kind, max(0.0, now - z.age_s))
            for z in self.zombies.values()
        ]

    def abandon(self, att: Attempt) -> None:
        """``att``'s task outlived its grace: track it until it finishes."""
        job, task = att.job, att.task
        assert task is not None
        self.zombies[id(att)] = Zombie(job.id, job.session, "task", self._loop.time())
        self._abandoned.add(att)
        task.add_done_callback(partial(self._task_done, att))
        log.warning(
            "job.zombie: %s ignored cancellation for its grace; abandoned, slots freed",
            job.id,
            extra={"job_id": job.id, "session": job.session, "reason": att.reason},
        )

    def _task_done(self, att: Attempt, _task: asyncio.Task[None]) -> None:
        self.zombies.pop(id(att), None)
        self._abandoned.discard(att)

    def reap(self, att: Attempt) -> None:
        """Kill the ended attempt's process groups; list its running threads as zombies."""
        for proc in list(att.procs or ()):
            self.kill(att, proc)
        now = self._loop.time()
        for cf in list(att.threads or ()):
            if cf.done():
                continue
            key = id(cf)
            self.zombies[key] = Zombie(att.job.id, att.job.session, "thread", now)
            cf.add_done_callback(partial(self._thread_done, key))

    def kill(self, att: Attempt, proc: asyncio.subprocess.Process) -> None:
        self.spawn(self._kill_and_track(att, proc))

    def _thread_done(self, key: int, _cf: ConcurrentFuture[Any]) -> None:
        loop = self._loop
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.zombies.pop, key, None)

    async def _kill_and_track(self, att: Attempt, proc: asyncio.subprocess.Process) -> None:
        key = id(proc)
        self.zombies[key] = Zombie(att.job.id, att.job.session, "process", self._loop.time())
        try:
            await kill_group(proc, att.kill_grace)
        finally:
            self.zombies.pop(key, None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; ``settle()`` waits for it at close."""
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def settle(self) -> None:
        """Wait (up to 5 s) for background kills and upkeep to finish."""
        if self.background:
            await asyncio.wait(list(self.background), timeout=5.0)

    def release_all(self) -> None:
        """Give abandoned tasks one more cancel, then stop tracking them.

        A task that swallows every cancellation would otherwise make the event
        loop's own shutdown (``asyncio.run``) wait for it forever.
        """
        unregister = getattr(asyncio.tasks, "_unregister_task", None)
        for att in self._abandoned:
            task = att.task
            if task is None or task.done():
                continue
            task.cancel(msg="laneway: closed")
            log.warning(
                "job.zombie: %s still running at close; left behind",
                att.job.id,
                extra={"job_id": att.job.id, "session": att.job.session},
            )
            if unregister is not None:
                unregister(task)
        self._abandoned.clear()
