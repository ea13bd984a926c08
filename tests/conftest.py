"""Shared fixtures: Laneways on a store kit (memory unless a test asks for every kit)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from laneway import Laneway
from laneway.stores import Store

from ._helpers import STORE_KITS, Stubborn, settle

MakeLaneway = Callable[..., Laneway]


def pytest_sessionstart(session: pytest.Session) -> None:
    # On Python 3.11, asyncio.get_event_loop() creates a loop if none was ever
    # set; pytest-asyncio calls it around async tests and restores that loop
    # afterwards, never closing it, so a sync test followed by an async one
    # ends the run with "unclosed event loop" (an error under -W error).
    asyncio.set_event_loop(None)


@pytest.fixture
def store_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str | Store]:
    """Makes the store ``make_laneway`` uses (memory, unless a test asks for every kit).

    A factory, so that two Laneways of one test (a restart) open the same database.
    """
    kit = STORE_KITS[getattr(request, "param", "memory")]
    return lambda: kit(tmp_path)


@pytest.fixture
async def make_laneway(store_kit: Callable[[], str | Store]) -> AsyncIterator[MakeLaneway]:
    """Build Laneways (on ``store_kit``'s store, watchdog off unless asked); all closed at teardown.

    Returns a factory: ``lw = make_laneway(lanes={"llm": 2})``; register
    handlers, then ``await lw.start()`` (or use ``started()``).
    """
    stack = AsyncExitStack()
    made: list[Laneway] = []

    def factory(**kwargs: Any) -> Laneway:
        kwargs.setdefault("watchdog_threshold", None)
        if "store" not in kwargs:
            kwargs["store"] = store_kit()
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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Close the event loop looptime's hook makes the policy create for a plain test.

    Before every test, looptime asks the (autouse) event loop policy for its
    current loop; for a sync test there is none, so the policy creates one that
    nobody closes, and its ResourceWarning surfaces later in a random test.
    """
    try:
        return (yield)
    finally:
        if pyfuncitem.get_closest_marker("asyncio") is None:  # a plain test
            _close_current_loop()


def _close_current_loop() -> None:
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    policy.set_event_loop(None)
