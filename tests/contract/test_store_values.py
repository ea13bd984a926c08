"""Every store accepts, refuses and round-trips the same payloads, results and event data.

The rule is ``laneway._codec``'s: strict JSON with string keys, 64-bit ints,
finite floats, valid Unicode without NUL, bounded nesting; tuples come back as
lists. A refused value raises ``InvalidPayload`` at the call, before anything
is written.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import pytest

from laneway import InvalidPayload, JobState
from laneway._codec import MAX_DEPTH, clean_text
from laneway.stores import Store

from .conftest import KITS, StoreKit
from .test_store_contract import add, started


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


class Colour(enum.IntEnum):
    RED = 1


# (value, what every store gives back)
KEPT: dict[str, tuple[Any, Any]] = {
    "tuple": ((1, "a"), [1, "a"]),
    "tuple_in_dict": ({"t": (1, (2, 3))}, {"t": [1, [2, 3]]}),
    "int_64_max": (2**63 - 1, 2**63 - 1),
    "int_64_min": ({"n": -(2**63)}, {"n": -(2**63)}),
    "float": ([1.5, -0.0, 1e300], [1.5, -0.0, 1e300]),
    "unicode": ({"é": "naïve ☃ 𝄞"}, {"é": "naïve ☃ 𝄞"}),
    "bool_and_none": ([True, False, None], [True, False, None]),
    "int_enum": ([Colour.RED], [1]),
    "deepest_allowed": (_nested(MAX_DEPTH), _nested(MAX_DEPTH)),
}
# (value, words the error must contain)
REFUSED: dict[str, tuple[Any, str]] = {
    "int_key": ({1: 2}, "dict keys must be strings"),
    "none_key": ({"a": {None: 1}}, "at ['a']"),
    "tuple_key": ({(1, 2): "x"}, "dict keys must be strings"),
    "huge_int": (10**5000, "64 bits"),
    "int_past_64_bits": ([2**63], "at [0]"),
    "nan": (float("nan"), "finite"),
    "inf": ({"x": [float("inf")]}, "at ['x'][0]"),
    "minus_inf": (-float("inf"), "finite"),
    "bytes": (b"raw", "bytes is not a JSON type"),
    "bytes_inside": ({"b": [b"x"]}, "bytes is not a JSON type"),
    "set": ({1, 2}, "set is not a JSON type"),
    "too_deep": (_nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    "nul": ("a\x00b", "NUL"),
    "lone_surrogate": ({"k": "\ud800"}, "Unicode"),
    "object": (object(), "object is not a JSON type"),
}


def _exact(value: Any) -> str:
    """A form that tells a tuple from a list and True from 1."""
    return repr(value)


@pytest.mark.parametrize("name", sorted(KEPT))
async def test_values_come_back_as_the_rule_says(store: Store, name: str) -> None:
    value, expected = KEPT[name]
    info, queued = await add(store, payload=value)
    assert queued is not None
    assert _exact(info.payload) == _exact(queued.data["payload"]) == _exact(expected)
    assert await store.start_attempt(info.id, 1) is not None
    event = await store.append_event("s", info.id, "delta", value, attempt=1)
    assert event is not None
    assert _exact(event.data) == _exact(expected)
    done = await store.finish(
        info.id, 1, JobState.SUCCEEDED, result=value, error=None, reason=None, lost=False
    )
    assert done is not None
    assert _exact(done.data["result"]) == _exact(expected)
    stored = await store.get_job(info.id)
    assert stored is not None
    assert _exact(stored.payload) == _exact(stored.result) == _exact(expected)
    logged = [e.data for e in await store.read_events("s") if e.job_id == info.id]
    assert _exact(logged[0]["payload"]) == _exact(logged[2]) == _exact(expected)
    assert _exact(logged[3]["result"]) == _exact(expected)


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_values_outside_the_rule_are_refused_at_the_call(store: Store, name: str) -> None:
    value, words = REFUSED[name]
    with pytest.raises(InvalidPayload, match="is not strict JSON") as payload_error:
        store.add_job(
            job_id="bad", session="s", handler="h", payload=value, priority=0, idempotency_key=None
        )
    assert words in str(payload_error.value)
    assert await store.get_job("bad") is None
    info = await started(store)
    with pytest.raises(InvalidPayload, match=f"event data is not strict JSON.*{_re(words)}"):
        store.append_event("s", info.id, "delta", value, attempt=1)
    with pytest.raises(InvalidPayload, match=f"result is not strict JSON.*{_re(words)}"):
        store.finish(
            info.id, 1, JobState.SUCCEEDED, result=value, error=None, reason=None, lost=False
        )
    stored = await store.get_job(info.id)
    assert stored is not None
    assert stored.state is JobState.RUNNING
    assert [e.kind for e in await store.read_events("s")] == ["job.queued", "job.started"]


def _re(words: str) -> str:
    return re.escape(words)


async def test_every_store_agrees_on_every_value(
    tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    """The same table through every store at once: identical answers, value by value."""
    answers: dict[str, list[str]] = {}
    for kit_name, kit_type in sorted(KITS.items()):
        kit: StoreKit = kit_type(tmp_path / kit_name, request)
        (tmp_path / kit_name).mkdir()
        try:
            store = await kit.open()
            answers[kit_name] = [
                await _answer(store, v) for v, _ in (*KEPT.values(), *REFUSED.values())
            ]
        finally:
            await kit.close_all()
    first, *others = answers.values()
    assert others
    for other in others:
        assert other == first


async def _answer(store: Store, value: Any) -> str:
    try:
        info, _ = await add(store, payload=value)
    except InvalidPayload as exc:
        return f"refused: {exc}"
    stored = await store.get_job(info.id)
    assert stored is not None
    return f"kept: {_exact(stored.payload)}"


async def test_error_texts_every_store_can_keep_are_repaired_not_refused(store: Store) -> None:
    """Errors come from exceptions (a NUL, a lone surrogate): the ending must still land."""
    info = await started(store)
    raw = "bad \x00 byte and \ud800 half"
    retried = await store.retry(info.id, 1, error=raw, reason="ValueError", lost=False, delay=0)
    assert retried is not None
    assert await store.start_attempt(info.id, 2) is not None
    ended = await store.finish(
        info.id, 2, JobState.FAILED, result=None, error=raw, reason="ValueError", lost=False
    )
    assert ended is not None
    repaired = clean_text(raw)
    assert repaired is not None
    assert "\x00" not in repaired
    assert repaired.startswith("bad \ufffd byte and ")
    assert retried.data["error"] == ended.data["error"] == repaired
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.error) == (JobState.FAILED, repaired)
    logged = [e.data.get("error") for e in await store.read_events("s") if e.job_id == info.id]
    assert logged[-1] == logged[-3] == repaired
