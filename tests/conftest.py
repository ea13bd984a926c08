"""Shared fixtures: a started Laneway on the memory store, closed after the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from laneway import Laneway

MakeLaneway = Callable[..., Laneway]


def pytest_sessionstart(session: pytest.Session) -> None:
    # On Python 3.11, asyncio.get_event_loop() creates a loop if none was ever
    # set; pytest-asyncio calls it around async tests and restores that loop
    # afterwards, never closing it, so a sync test followed by an async one
    # ends the run with "unclosed event loop" (an error under -W error).
    asyncio.set_event_loop(None)


@pytest.fixture
async def make_laneway() -> AsyncIterator[MakeLaneway]:
    """Build Laneways (memory store, watchdog off unless asked); all closed at teardown.

    Returns a factory: ``lw = make_laneway(lanes={"llm": 2})``; register
    handlers, then ``await lw.start()`` (or use ``started()``).
    """
    stack = AsyncExitStack()
    made: list[Laneway] = []

    def factory(**kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        lw = Laneway(**kwargs)
        made.append(lw)
        return lw

    async with stack:
        yield factory
        for lw in made:
            await lw.close()
