"""JSON checks at the boundary: payloads, event data and results must be JSON."""

from __future__ import annotations

import json
from typing import Any

from .._errors import InvalidPayload

__all__ = ["check_json", "check_result", "fallback_reason"]

# Floats are left to json.dumps, which refuses NaN and infinities.
_SCALARS = (str, int, bool, type(None))


def check_json(value: Any, what: str) -> None:
    """Raise ``InvalidPayload`` unless ``value`` serialises to strict JSON."""
    if type(value) in _SCALARS:
        return
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from None


def check_result(value: Any) -> None:
    """Raise ``InvalidPayload`` unless ``value`` reads back from JSON as itself.

    Stricter than ``check_json``: ``{1: 2}`` and tuples would come back from a
    durable store as ``{"1": 2}`` and lists, so a waiter would be told one
    result and a reader shown another."""
    try:
        same = json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"the handler's result is not JSON-serialisable: {exc}") from None
    if not same:  # a tuple never equals the list it reads back as
        raise InvalidPayload(
            "the handler's result does not read back from JSON as itself (non-string keys "
            "or tuples?)"
        )


def fallback_reason(exc: BaseException) -> str:
    """``InvalidPayload`` if a store refused a value it cannot encode, else ``StoreError``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, InvalidPayload | ValueError | TypeError | RecursionError) or isinstance(
        cause, InvalidPayload | ValueError | TypeError | RecursionError
    ):
        return "InvalidPayload"
    return "StoreError"
