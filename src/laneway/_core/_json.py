"""JSON checks at the boundary: payloads, event data and results must be JSON.

The rule itself lives in ``laneway._codec``, the one the stores encode with, so
what the runtime lets through is exactly what every store can keep.
"""

from __future__ import annotations

from typing import Any

from .._codec import canonical, check_json
from .._errors import InvalidPayload

__all__ = ["check_json", "check_result", "fallback_reason"]


def check_result(value: Any) -> None:
    """Raise ``InvalidPayload`` unless ``value`` follows the codec's rule and reads
    back from it as itself.

    Stricter than ``check_json``: a tuple would come back from every store as a
    list, so a waiter would be told one result and a reader shown another."""
    back, _ = canonical(value, "the handler's result")
    if back != value:
        raise InvalidPayload(
            "the handler's result does not read back from JSON as itself (a tuple?)"
        )


def fallback_reason(exc: BaseException) -> str:
    """``InvalidPayload`` if a store refused a value it cannot encode, else ``StoreError``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, InvalidPayload | ValueError | TypeError | RecursionError) or isinstance(
        cause, InvalidPayload | ValueError | TypeError | RecursionError
    ):
        return "InvalidPayload"
    return "StoreError"
