"""JSON checks at the boundary: payloads, event data and results must be JSON."""

from __future__ import annotations

import json
from typing import Any

from .._errors import InvalidPayload

__all__ = ["check_json"]

# Floats are left to json.dumps, which refuses NaN and infinities.
_SCALARS = (str, int, bool, type(None))


def check_json(value: Any, what: str, max_bytes: int | None = None) -> None:
    """Raise ``InvalidPayload`` unless ``value`` serialises to strict JSON
    of at most ``max_bytes`` bytes (its ASCII-escaped encoding, the bound on
    what any store writes)."""
    if type(value) in _SCALARS and (max_bytes is None or not isinstance(value, str)):
        return
    if max_bytes is not None:
        # Refuse a value that is plainly too big before encoding it: the encoding
        # would be one more copy of it (100 MB of data, 100 MB more).
        try:
            least = _least_size(value, max_bytes)
        except RecursionError:
            least = 0  # json.dumps refuses it below
        if least > max_bytes:
            _too_big(what, f"at least {least}", max_bytes)
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from None
    if max_bytes is not None and size > max_bytes:
        _too_big(what, str(size), max_bytes)


def _least_size(value: Any, limit: int) -> int:
    """A lower bound of the size of ``value`` as JSON; stops counting past ``limit``."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        items: Any = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple):
        items = value
    else:
        return 1
    total = 1
    for item in items:
        total += _least_size(item, limit - total) + 1
        if total > limit:
            break
    return total


def _too_big(what: str, size: str, max_bytes: int) -> None:
    raise InvalidPayload(f"{what} is {size} bytes as JSON, over max_event_bytes ({max_bytes})")
