"""What the console shows beyond the snapshot: the turns running now (when each
started, when it last made output) and the recent ``loop.blocked`` reports;
and where each recently queued job's events begin in its session's log.

Both are followed from public hooks only: committed events through
``Laneway.add_listener`` and the watchdog's log records through ``logging``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from .. import Laneway
from .._types import Event

__all__ = ["Activity", "Block", "Turn"]

_ENDS = frozenset(
    {"job.retry", "job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "job.dead"}
)


@dataclass(slots=True)
class Turn:
    """One running attempt, as seen from its session's committed events."""

    job_id: str
    session: str
    attempt: int
    started_at: float  # wall clock, like Event.at
    last_output_at: float


@dataclass(frozen=True, slots=True)
class Block:
    at: float
    blocked_s: float
    stack: str


class _BlockRecorder(logging.Handler):
    def __init__(self, into: deque[Block]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("loop.blocked"):
            return
        extra: dict[str, Any] = record.__dict__
        self.into.append(
            Block(record.created, float(extra.get("blocked_s", 0.0)), str(extra.get("stack", "")))
        )


class Activity:
    """Running turns and recent loop blocks of one Laneway."""

    def __init__(self, keep_blocks: int = 20, keep_queued: int = 4096) -> None:
        self.turns: dict[str, Turn] = {}
        # job id -> seq of its job.queued event, for the submit answer: a client
        # follows the job from its own first event instead of the whole session.
        self._queued: OrderedDict[str, int] = OrderedDict()
        self._keep_queued = keep_queued
        self.blocks: deque[Block] = deque(maxlen=keep_blocks)
        self._recorder = _BlockRecorder(self.blocks)
        self._logger = logging.getLogger("laneway.watchdog")
        self._unlisten: Any = None

    def watch(self, lw: Laneway) -> None:
        """Follow ``lw``'s committed events and the watchdog's log records."""
        self._unlisten = lw.add_listener(self.observe)
        self.watch_logs()

    def watch_logs(self) -> None:
        self._logger.addHandler(self._recorder)

    def close(self) -> None:
        self._logger.removeHandler(self._recorder)
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def queued_seq(self, job_id: str) -> int | None:
        """The seq of the job's ``job.queued`` event, if it was queued recently."""
        return self._queued.get(job_id)

    def observe(self, event: Event) -> None:
        job_id = event.job_id
        if job_id is None:
            return
        if event.kind == "job.queued":
            self._queued[job_id] = event.seq
            if len(self._queued) > self._keep_queued:
                self._queued.popitem(last=False)
        elif event.kind == "job.started":
            data = event.data if isinstance(event.data, dict) else {}
            attempt = int(data.get("attempt", 1))
            self.turns[job_id] = Turn(job_id, event.session, attempt, event.at, event.at)
        elif event.kind in _ENDS:
            self.turns.pop(job_id, None)
        elif (turn := self.turns.get(job_id)) is not None:
            turn.last_output_at = event.at
