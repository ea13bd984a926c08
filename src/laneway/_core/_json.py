"""JSON checks at the boundary: payloads, event data and results must be JSON.

The rule itself lives in ``laneway._codec``, the one the stores encode with, so
what the runtime lets through is exactly what every store can keep.
"""

from __future__ import annotations

from .._codec import check_json

__all__ = ["check_json"]
