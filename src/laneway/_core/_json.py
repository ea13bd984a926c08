"""JSON checks at the boundary: payloads, event data and results must be JSON."""

from __future__ import annotations

import json
from typing import Any

from .._errors import InvalidPayload

__all__ = ["check_json"]

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
