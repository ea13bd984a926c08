"""Shared fixtures: Laneways on a store kit (memory unless a test asks for every kit),
and a throwaway PostgreSQL server."""

from __future__ import annotations

import asyncio
import itertools
import os
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from laneway import Laneway
from laneway.stores import Store

from ._helpers import STORE_KITS, Stubborn, settle
from .pgserver import PostgresServer, ServerMissing

MakeLaneway = Callable[..., Laneway]


def pytest_sessionstart(session: pytest.Session) -> None:
    # On Python 3.11, asyncio.get_event_loop() creates a loop if none was ever
    # set; pytest-asyncio calls it around async tests and restores that loop
    # afterwards, never closing it, so a sync test followed by an async one
    # ends the run with "unclosed event loop" (an error under -W error).
    asyncio.set_event_loop(None)


@pytest.fixture
def store_kit(request: pytest.FixtureRequest) -> Callable[[], str | Store]:
    """Makes the store ``make_laneway`` uses (memory, unless a test asks for every kit).

    A factory, so that two Laneways of one test (a restart) open the same database.
    """
    return STORE_KITS[getattr(request, "param", "memory")](request)


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


# -- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole run, stopped and removed at the end.

    Without the server binaries the PostgreSQL tests skip on a workstation and
    fail in CI (``CI=true``), where ``scripts/test`` installs them.
    """
    try:
        server = PostgresServer()
    except ServerMissing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:  # stopped on every way out: a failed start, the end of the run, Ctrl-C
        yield server.start()
    finally:
        server.stop()


_schemas = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A store URL on the test server with a schema of its own: every test starts empty."""
    return f"{postgres_server.dsn()}?schema=t{os.getpid()}_{next(_schemas)}&lease=30s&poll=1s"
