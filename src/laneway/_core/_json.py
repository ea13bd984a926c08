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
    if isinstance(value, str) and max_bytes is not None and len(value) + 2 > max_bytes:
        _too_big(what, len(value) + 2, max_bytes)  # without encoding it first
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from None
    if max_bytes is not None and size > max_bytes:
        _too_big(what, size, max_bytes)


def _too_big(what: str, size: int, max_bytes: int) -> None:
    raise InvalidPayload(f"{what} is {size} bytes as JSON, over max_event_bytes ({max_bytes})")
