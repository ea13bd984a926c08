"""Helpers for testing code that uses laneway: misbehaving turns on demand.

Each helper reproduces one way real model calls and tools wedge a gateway, so
a user can check that their handlers and settings survive it::

    @lw.handler("chat")
    async def chat(ctx, payload):
        await laneway.testing.hang_ignoring_cancel()   # a call that never returns

``FakeOpenAI`` is an OpenAI-compatible endpoint on loopback whose replies,
errors and hangs a test scripts request by request. ``fake_agent_cli()`` is
the command line of a fake agent CLI (text or Claude Code's stream-json) that
streams, hangs with SIGTERM ignored, crashes or fails on command.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from ._fakeopenai import FakeOpenAI, FakeRequest

__all__ = [
    "FakeOpenAI",
    "FakeRequest",
    "block_loop",
    "fake_agent_cli",
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


def fake_agent_cli(
    format: str = "text", *, state: str | Path | None = None, delay: float = 0.0
) -> list[str]:
    """The command line of a fake agent CLI; append the message as its last argument.

    ``format`` is ``"text"`` or ``"stream-json"`` (Claude Code's shape: an
    ``init`` with a session id, assistant text, a tool call and its result, a
    final ``result``). With ``state`` (a directory) it keeps a turn count per
    session and takes ``--resume ID``. ``delay`` is seconds between lines.
    The message may be a command: ``/stream N S``, ``/long N``, ``/hang``
    (prints ``pid P`` and ``child C``, then blocks with SIGTERM ignored in both),
    ``/fail CODE``, ``/crash``, ``/crash-once``; anything else is answered.
    """
    if format not in ("text", "stream-json"):
        raise ValueError(f"format must be 'text' or 'stream-json', got {format!r}")
    script = Path(__file__).with_name("_fake_agent_cli.py")
    argv = [sys.executable, str(script), "--format", format]
    if state is not None:
        argv += ["--state", str(state)]
    if delay:
        argv += ["--delay", repr(float(delay))]
    return argv
