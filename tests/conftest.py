"""Shared fixtures: a started Laneway on the memory store, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from laneway import Laneway

from ._helpers import Stubborn, settle

MakeLaneway = Callable[..., Laneway]


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


@pytest.fixture
async def stubborn() -> AsyncIterator[Stubborn]:
    """Cancellation-swallowing turns, released at teardown so the loop can close."""
    helper = Stubborn()
    yield helper
    helper.release()
    await settle()
