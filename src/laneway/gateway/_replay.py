"""Replay of a session's log for event streams, in pages of bounded size.

A stream holds one page at a time and reads the next only when its client
has taken the last event (the transport's backpressure reaches the reader),
so a client that reads slowly, or not at all, holds about ``PAGE_BYTES`` of
the log, not the whole of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic_core import to_json

from .. import Event, Laneway

__all__ = ["PAGE_BYTES", "replay"]

#: About how much of the log one stream holds while replaying it.
PAGE_BYTES = 2 * 1024 * 1024
_MAX_PAGE = 500


async def replay(lw: Laneway, session: str, after: int) -> AsyncIterator[Event]:
    """The events of ``session`` after ``after`` that are in the store now, oldest first.

    Pages start as small as the largest possible event demands and grow once
    the events are seen to be small.
    """
    limit = _limit(lw.max_event_bytes)
    while True:
        page = await lw.store.read_events(session, after=after, limit=limit)
        full = len(page) == limit
        page.reverse()
        largest = 1
        while page:
            event = page.pop()  # an event sent is no longer held by the page
            largest = max(largest, len(to_json(event.data)))
            after = event.seq
            yield event
        if not full:
            return
        limit = _limit(largest)


def _limit(event_bytes: int) -> int:
    return max(1, min(_MAX_PAGE, PAGE_BYTES // max(1, event_bytes)))
