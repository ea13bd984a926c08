"""Bad configuration and bad input are clear errors at the call, never a hang.

No virtual time here: nothing waits, and looptime would give every plain
(sync) test an event loop that is never closed.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from laneway import (
    ConfigError,
    InvalidPayload,
    InvalidSession,
    JobState,
    Laneway,
    LanewayError,
    Limits,
    Retry,
    TurnContext,
    UnknownHandler,
)

from .._helpers import events_of
from ..conftest import MakeLaneway


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadline": -1},
        {"deadline": 0},
        {"idle": 0},
        {"queue_wait": -5},
        {"deadline": "10"},
        {"deadline": True},
        {"deadline": math.nan},
        {"cancel_grace": -1},
        {"cancel_grace": None},  # a slot must never wait forever
    ],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Limits(**kwargs)


def test_sensible_limits_are_accepted() -> None:
    limits = Limits(deadline=None, idle=0.5, queue_wait=None, cancel_grace=0)
    assert limits.value("deadline") is None
    assert limits.value("cancel_grace") == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"backoff": -1},
        {"max_backoff": math.nan},
        {"backoff": "1"},
    ],
)
def test_nonsense_retry_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Retry(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lanes": {"llm": 0}},
        {"lanes": {"llm": -1}},
        {"lanes": {"llm": 1.5}},
        {"lanes": {"": 1}},
        {"lanes": {"session:x": 1}},
        {"lanes": ["llm"]},
        {"session_limit": 0},
        {"poison_after": 0},
        {"max_queued": 0},
        {"max_queued_per_session": -1},
        {"watchdog_threshold": 0},
        {"exit_after": -1},
        {"wait_warn": 0},
        {"sync_workers": 0},
        {"limits": 5},
        {"retry": "x"},
        {"store": "nope"},
        {"store": "ftp://host/db"},
        {"store": 123},
    ],
)
def test_nonsense_laneway_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        Laneway(**kwargs)
    assert isinstance(err.value, ValueError)


async def _noop(ctx: TurnContext, payload: Any) -> None:
    return None


def _sync_fn(ctx: TurnContext, payload: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("name", "kwargs", "fn"),
    [
        ("gpu", {"lanes": ("gpu",)}, _noop),  # not configured
        ("str", {"lanes": "llm"}, _noop),  # a string, not a tuple of names
        ("sync", {}, _sync_fn),  # not async
        ("dup", {}, _noop),
        ("", {}, _noop),
        ("iso", {"isolation": "thread"}, _noop),
        ("limits", {"limits": {"deadline": 1}}, _noop),
    ],
)
def test_bad_handler_registrations_are_refused(name: str, kwargs: dict[str, Any], fn: Any) -> None:
    lw = Laneway(lanes={"llm": 1}, watchdog_threshold=None)
    lw.handler("dup")(_noop)
    with pytest.raises(ConfigError):
        lw.handler(name, **kwargs)(fn)


def _echo(make_laneway: MakeLaneway) -> Laneway:
    lw = make_laneway()

    @lw.handler("echo")
    async def echo(ctx: TurnContext, payload: Any) -> Any:
        return payload

    @lw.handler("emit")
    async def emit(ctx: TurnContext, payload: str) -> str:
        bad: dict[str, tuple[str, Any]] = {
            "data": ("delta", {"x": object()}),
            "nan": ("delta", math.nan),
            "reserved": ("job.succeeded", None),
            "empty kind": ("", None),
        }
        kind, data = bad[payload]
        try:
            await ctx.emit(kind, data)
        except InvalidPayload:
            return "refused"
        return "accepted"

    return lw


@pytest.mark.parametrize(
    "session", ["", "x" * 257, "line\nbreak", "nul\x00", "tab\there", 42, None]
)
async def test_bad_session_keys_are_refused(make_laneway: MakeLaneway, session: Any) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    with pytest.raises(InvalidSession):
        await lw.submit(session, "echo", {})
    with pytest.raises(InvalidSession):
        await lw.stop(session)
    with pytest.raises(InvalidSession):
        await anext(lw.events(session))
    assert await (await lw.submit("x" * 256, "echo", 1)).result() == 1
    assert lw.snapshot().jobs_queued == 0


@pytest.mark.parametrize(
    "payload", [{"x": object()}, math.nan, {1, 2}, b"bytes", {"deep": [math.inf]}]
)
async def test_payloads_that_are_not_json_are_refused(
    make_laneway: MakeLaneway, payload: Any
) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    with pytest.raises(InvalidPayload):
        await lw.submit("alice", "echo", payload)
    assert await lw.jobs(session="alice") == []
    assert await events_of(lw, "alice") == []


async def test_a_circular_payload_is_refused(make_laneway: MakeLaneway) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidPayload):
        await lw.submit("alice", "echo", loop)


async def test_an_unknown_handler_is_refused(make_laneway: MakeLaneway) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    with pytest.raises(UnknownHandler, match="echo") as err:
        await lw.submit("alice", "nope", {})
    assert isinstance(err.value, LookupError)
    assert lw.snapshot().jobs_queued == 0
    with pytest.raises(ConfigError):
        await lw.submit("alice", "echo", {}, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await lw.jobs(state="bogus")


@pytest.mark.parametrize("case", ["data", "nan", "reserved", "empty kind"])
async def test_bad_event_data_is_refused_at_emit(make_laneway: MakeLaneway, case: str) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    job = await lw.submit("alice", "emit", case)
    assert await job.result() == "refused"
    assert [e.kind for e in await events_of(lw, "alice")] == [
        "job.queued",
        "job.started",
        "job.succeeded",
    ]


async def test_the_same_idempotency_key_returns_the_same_job(make_laneway: MakeLaneway) -> None:
    lw = _echo(make_laneway)
    await lw.start()
    first = await lw.submit("alice", "echo", 1, idempotency_key="msg-1")
    again = await lw.submit("alice", "echo", 2, idempotency_key="msg-1")
    other = await lw.submit("bob", "echo", 3, idempotency_key="msg-1")  # per session
    assert again.id == first.id
    assert other.id != first.id
    assert await first.result() == 1
    await lw.join()
    assert [j.state for j in await lw.jobs(session="alice")] == [JobState.SUCCEEDED]


def test_every_error_names_its_cause() -> None:
    assert "session" in str(InvalidSession())
    assert str(LanewayError()) == "laneway failed."
