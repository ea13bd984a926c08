"""Helpers for testing code that uses laneway: misbehaving turns on demand.

Each helper reproduces one way real model calls and tools wedge a gateway, so
a user can check that their handlers and settings survive it::

    @lw.handler("chat")
    async def chat(ctx, payload):
        await laneway.testing.hang_ignoring_cancel()   # a call that never returns

``FakeOpenAI`` is an OpenAI-compatible endpoint on loopback whose replies,
errors and hangs a test scripts request by request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

from ._fakeopenai import FakeOpenAI, FakeRequest

__all__ = [
    "FakeOpenAI",
    "FakeRequest",
    "block_loop",
    "hang",
    "hang_ignoring_cancel",
    "model_stream",
]


async def hang() -> None:
    """Never return (but honour cancellation), like a model call with no timeout."""
    await asyncio.Event().wait()


async def hang_ignoring_cancel(times: int | None = None) -> None:
    """Never return and swallow cancellation (``times`` times, or forever).

    This is the phantom-slot task of seed 001: code that catches
    ``CancelledError`` and carries on waiting.
    """
    swallowed = 0
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed += 1
            if times is not None and swallowed > times:
                raise


def block_loop(seconds: float) -> None:
    """Block the event loop's thread (a synchronous retry storm, a CPU-bound parse)."""
    time.sleep(seconds)


async def model_stream(
    chunks: Iterable[str],
    *,
    delay: float = 0.0,
    stall_after: int | None = None,
) -> AsyncIterator[str]:
    """Yield ``chunks`` with ``delay`` between them; after ``stall_after``
    chunks go silent forever (a stream that stops mid-reply, seed 004)."""
    for i, chunk in enumerate(chunks):
        if stall_after is not None and i >= stall_after:
            await hang()
        if delay:
            await asyncio.sleep(delay)
        yield chunk
