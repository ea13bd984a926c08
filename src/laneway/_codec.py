"""The one JSON rule for payloads, results and event data, and its encoder.

Every store keeps values as this encoding and gives back what decoding it
yields, so every store accepts, refuses and round-trips exactly the same
values. The rule is strict JSON that every backend and client can hold:

- ``None``, ``bool``, ``str``, ``int``, ``float``, ``list``, ``tuple``, ``dict``;
  a tuple comes back as a list;
- dict keys are strings (``{1: 2}`` is refused, not turned into ``{"1": 2}``);
- ints within a signed 64-bit range (SQLite's integers, and what most JSON
  parsers keep exact); floats finite (no NaN or infinities);
- strings are valid Unicode without NUL characters (PostgreSQL stores neither
  lone surrogates nor ``\\u0000``);
- at most ``MAX_DEPTH`` levels of nesting.

Anything else raises ``InvalidPayload`` naming what was wrong and where.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from ._errors import InvalidPayload

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MIN_INT",
    "canonical",
    "check_json",
    "clean_text",
    "decode",
    "encode",
]

MAX_DEPTH: Final = 100
MAX_INT: Final = 2**63 - 1
MIN_INT: Final = -(2**63)

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_encode_str = json.encoder.encode_basestring
decode = json.JSONDecoder().decode
_NOTHING_TO_CHECK: Final = (type(None), bool)


class _Refused(Exception):
    """Why a value is not allowed, and the path to it (built while unwinding)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
        self.path: list[str] = []


def check_json(value: Any, what: str, max_bytes: int | None = None) -> None:
    """Raise ``InvalidPayload`` unless ``value`` follows the rule above and, with
    ``max_bytes``, is at most that many bytes as (ASCII-escaped) JSON, the bound
    on what any store writes for it."""
    if type(value) in _NOTHING_TO_CHECK:
        return
    if max_bytes is not None:
        # Refuse a value that is plainly too big before encoding it: the encoding
        # would be one more copy of it (100 MB of data, 100 MB more).
        least = _least_size(value, max_bytes, 0)
        if least > max_bytes:
            _too_big(what, f"at least {least}", max_bytes)
    try:
        _check(value, 0)
    except _Refused as exc:
        raise _invalid(what, exc) from None
    if max_bytes is not None and not isinstance(value, int | float):
        size = len(json.dumps(value))
        if size > max_bytes:
            _too_big(what, str(size), max_bytes)


def _least_size(value: Any, limit: int, depth: int) -> int:
    """A lower bound of the size of ``value`` as JSON; stops counting past ``limit``."""
    if isinstance(value, str):
        return len(value) + 2
    if depth > MAX_DEPTH:
        return 0  # refused by the rule, with a better message
    if isinstance(value, dict):
        items: Any = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple):
        items = value
    else:
        return 1
    total = 1
    for item in items:
        total += _least_size(item, limit - total, depth + 1) + 1
        if total > limit:
            break
    return total


def _too_big(what: str, size: str, max_bytes: int) -> None:
    raise InvalidPayload(f"{what} is {size} bytes as JSON, over max_event_bytes ({max_bytes})")


def encode(value: Any, what: str) -> str:
    """``value`` as compact JSON text; ``InvalidPayload`` if the rule refuses it."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is str:
        _check_str(value, what)
        return _encode_str(value)
    check_json(value, what)
    if kind is int:
        return int.__repr__(value)
    return _dumps(value)


def canonical(value: Any, what: str) -> tuple[Any, str]:
    """The value a store gives back for ``value`` (tuples as lists), and its text."""
    text = encode(value, what)
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value, text
    return decode(text), text


def clean_text(text: str | None) -> str | None:
    """An error message or reason as every store can keep it.

    These come from exceptions, not from the caller, so they are repaired rather
    than refused: NUL characters and lone surrogates become U+FFFD.
    """
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    repaired = text.replace("\x00", "\ufffd")
    return repaired.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _invalid(what: str, exc: _Refused) -> InvalidPayload:
    where = "".join(reversed(exc.path))
    at = f" at {where}" if where else ""
    return InvalidPayload(f"{what} is not strict JSON{at}: {exc.why}")


def _check_str(text: str, what: str) -> None:
    try:
        _text(text)
    except _Refused as exc:
        raise _invalid(what, exc) from None


def _text(text: str) -> None:
    if "\x00" in text:
        raise _Refused("strings may not contain NUL characters")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise _Refused("strings must be valid Unicode (a lone surrogate)") from None


def _check(value: Any, depth: int) -> None:
    if isinstance(value, str):
        _text(value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise _Refused(f"ints must fit in 64 bits (got one of {value.bit_length()} bits)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"floats must be finite, got {value!r}")
    elif isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        _container(value, depth + 1)
    else:
        raise _Refused(f"{type(value).__name__} is not a JSON type")


def _container(value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(f"dict keys must be strings, got {type(key).__name__} {key!r}")
            _text(key)
            _step(item, depth, f"[{key!r}]")
    else:
        for index, item in enumerate(value):
            _step(item, depth, f"[{index}]")


def _step(item: Any, depth: int, where: str) -> None:
    try:
        _check(item, depth)
    except _Refused as exc:
        exc.path.append(where)
        raise
