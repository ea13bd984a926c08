"""What the durable stores share about their setup: URL option values and
versioned migration files.

Durations read ``30``, ``90s``, ``15m``, ``12h``, ``7d`` (``none``/``off`` ->
None); migrations are ``migrations/<backend>/NNNN_name.sql``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from .._errors import ConfigError

__all__ = ["DAY", "migration_files", "parse_duration", "positive_int"]

DAY = 86_400.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": DAY}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(name: str, value: Any, store: str = "sqlite store") -> float | None:
    """Seconds from ``30``, ``90s``, ``15m``, ``12h``, ``7d``; ``none``/``off`` -> None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("none", "off", "forever"):
        return None
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{store}: {name} must be a duration such as 30s, 7d or none")
    if not seconds > 0:
        raise ConfigError(f"{store}: {name} must be > 0 (or none), got {value!r}")
    return seconds


def positive_int(name: str, value: Any, store: str) -> int:
    """``value`` as an int >= 1, or a ``ConfigError`` naming the store and option."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"{store}: {name} must be an int >= 1, got {value!r}")
    return number


def migration_files(backend: str) -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration of ``backend``, in order."""
    folder = resources.files("laneway.stores").joinpath("migrations", backend)
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found
