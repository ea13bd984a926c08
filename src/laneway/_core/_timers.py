"""One heap for every deadline of the runtime.

Deadlines, idle checks, cancel graces, queue_wait expiries and retry backoffs
all live here, armed with a single loop timer for the earliest one. The loop
fires timers whatever the tasks do, so no limit depends on a task's
cooperation or on a free slot (guarantee 6).

A ``DelayLine`` is the cheap case for the commonest deadline: every item
pushed gets the same delay, so items fall due in push order and one heap
entry (for the line's head) serves them all. Items that no longer need the
check are skipped when they fall due, not removed one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["DelayLine", "TimerEntry", "Timers"]

T = TypeVar("T")

log = logging.getLogger("laneway.timers")


class TimerEntry:
    __slots__ = ("args", "callback", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback: Callable[..., None] | None = callback
        self.args = args

    @property
    def active(self) -> bool:
        return self.callback is not None


class Timers:
    """A deadline heap driven by one ``loop.call_at`` handle."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, TimerEntry]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._cancelled = 0
        self._firing_at: float | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def now(self) -> float:
        """The loop time, never earlier than the deadline being fired right now.

        The loop may run a timer up to its clock resolution early; comparing
        against the scheduled time keeps expiry checks exact.
        """
        t = self._loop.time()
        fa = self._firing_at
        return fa if fa is not None and fa > t else t

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> TimerEntry:
        entry = TimerEntry(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if not self._closed and (self._armed_at is None or when < self._armed_at):
            self._arm(when)
        return entry

    def cancel(self, entry: TimerEntry | None) -> None:
        if entry is None or entry.callback is None:
            return
        entry.callback = None
        entry.args = ()
        self._cancelled += 1
        if self._cancelled > 256 and self._cancelled * 2 > len(self._heap):
            self._heap = [item for item in self._heap if item[2].callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._heap.clear()
        self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # The loop may run us a hair before the armed time: everything up to it is due.
        horizon = max(self._loop.time(), self._armed_at or 0.0)
        self._handle = None
        self._armed_at = None
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            when, _, entry = heapq.heappop(heap)
            callback = entry.callback
            if callback is None:
                self._cancelled -= 1
                continue
            entry.callback = None
            self._firing_at = when
            try:
                callback(*entry.args)
            except Exception:
                _report(callback)
            finally:
                self._firing_at = None
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap and not self._closed:
            self._arm(heap[0][0])


class DelayLine(Generic[T]):
    """Items due ``delay`` seconds after their push, in push order, on ``timers``.

    ``callback(item)`` runs for each item as it falls due unless ``live(item)``
    is false by then. ``dropped()`` tells the line an item went dead, so a line
    full of dead items is compacted instead of growing until they fall due.
    """

    __slots__ = ("_callback", "_dead", "_entry", "_items", "_live", "_timers", "delay")

    def __init__(
        self,
        timers: Timers,
        delay: float,
        callback: Callable[[T], None],
        live: Callable[[T], bool],
    ) -> None:
        self._timers = timers
        self.delay = delay
        self._callback = callback
        self._live = live
        self._items: deque[tuple[float, T]] = deque()
        self._entry: TimerEntry | None = None
        self._dead = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, now: float) -> None:
        due = now + self.delay
        self._items.append((due, item))
        if self._entry is None:
            self._entry = self._timers.call_at(due, self._fire)

    def dropped(self) -> None:
        # Items mostly go dead in push order: popping dead ones off the front
        # frees them at once (an item kept until it falls due would outlive
        # the young collections and be walked by every full one).
        items, live = self._items, self._live
        dead = self._dead + 1
        while items and not live(items[0][1]):
            items.popleft()
            dead -= 1
        if dead < 0:  # _fire() skipped some dead items without counting them
            dead = 0
        self._dead = dead
        if dead > 256 and dead * 2 > len(items):
            self._items = deque(e for e in items if live(e[1]))
            self._dead = 0

    def _fire(self) -> None:
        self._entry = None
        items, live = self._items, self._live
        horizon = self._timers.now()
        while items and items[0][0] <= horizon:
            item = items.popleft()[1]
            if live(item):
                try:
                    self._callback(item)
                except Exception:
                    _report(self._callback)
        if items:
            self._entry = self._timers.call_at(items[0][0], self._fire)


def _report(callback: object) -> None:
    """Log a failed timer callback; a log handler that raises too must not stop the
    heap (every deadline and the lane monitor live on it)."""
    with contextlib.suppress(Exception):  # nowhere left to report it
        log.exception("timer callback failed", extra={"callback": repr(callback)})
