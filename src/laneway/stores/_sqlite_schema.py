"""SQLite store settings (from the URL) and the versioned schema migrations.

Migrations are the files ``migrations/sqlite/NNNN_name.sql``, applied in
order, each in its own transaction together with its ``schema_version`` row,
so a database is always at exactly one known version.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._errors import ConfigError, StoreError

__all__ = ["SQLiteSettings", "migrate", "migrations", "parse_duration", "parse_url"]

DAY = 86_400.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": DAY}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SYNCHRONOUS = ("normal", "full", "extra")


@dataclass(frozen=True, slots=True)
class SQLiteSettings:
    """How a ``sqlite:///`` store behaves; every field is also a URL query param.

    - ``synchronous``: ``normal`` (default; a commit survives a process crash,
      the last commits may be lost on power loss) or ``full`` / ``extra``
      (fsync on every commit; survives power loss, slower).
    - ``maintain_interval``: seconds between ownership heartbeats and
      retention passes (``none`` to disable).
    - ``retain_jobs``: how long finished jobs are kept (default 7 days; their
      idempotency keys go with them). ``none`` keeps them forever.
    - ``retain_events``: how long events are kept (default 30 days). ``none``
      keeps them forever.
    - ``batch_max``: most writes committed in one transaction.
    - ``busy_timeout``: seconds to wait for a lock held by a foreign process
      (for example the ``sqlite3`` shell) before failing with ``StoreError``.
    """

    path: str
    synchronous: str = "normal"
    maintain_interval: float | None = 5.0
    retain_jobs: float | None = 7 * DAY
    retain_events: float | None = 30 * DAY
    batch_max: int = 4096
    busy_timeout: float = 5.0


def parse_duration(name: str, value: Any) -> float | None:
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
        raise ConfigError(f"sqlite store: {name} must be a duration such as 30s, 7d or none")
    if not seconds > 0:
        raise ConfigError(f"sqlite store: {name} must be > 0 (or none), got {value!r}")
    return seconds


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"sqlite store: {name} must be an int >= 1, got {value!r}")
    return number


def _setting(settings: SQLiteSettings, name: str, value: Any) -> SQLiteSettings:
    if name == "synchronous":
        mode = str(value).lower()
        if mode not in _SYNCHRONOUS:
            raise ConfigError(f"sqlite store: synchronous must be one of {_SYNCHRONOUS}")
        return replace(settings, synchronous=mode)
    if name == "maintain_interval":
        return replace(settings, maintain_interval=parse_duration(name, value))
    if name == "retain_jobs":
        return replace(settings, retain_jobs=parse_duration(name, value))
    if name == "retain_events":
        return replace(settings, retain_events=parse_duration(name, value))
    if name == "busy_timeout":
        return replace(settings, busy_timeout=parse_duration(name, value) or 0.0)
    if name == "batch_max":
        return replace(settings, batch_max=_positive_int(name, value))
    raise ConfigError(f"sqlite store: unknown setting {name!r}")


def parse_url(url: str, **overrides: Any) -> SQLiteSettings:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``, with optional
    ``?synchronous=full&retain_jobs=7d...``; keyword overrides win."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        raise ConfigError(
            f"sqlite store URL must look like sqlite:///relative.db or sqlite:////abs.db, "
            f"got {url!r}"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path.endswith("/") or path == ":memory:":
        raise ConfigError(f"sqlite store URL {url!r} names no database file")
    settings = SQLiteSettings(path=path)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        settings = _setting(settings, name, value)
    for name, value in overrides.items():
        settings = _setting(settings, name, value)
    return settings


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration, in order."""
    folder = resources.files("laneway.stores").joinpath("migrations", "sqlite")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, upto: int | None = None) -> int:
    """Apply the migrations the database lacks; returns the resulting version."""
    known = migrations()
    version = current_version(conn)
    newest = known[-1][0] if known else 0
    if version > newest:
        raise StoreError(
            f"the database is at schema version {version}, newer than this laneway "
            f"knows ({newest}); upgrade laneway"
        )
    for number, name, sql in known:
        if number <= version or (upto is not None and number > upto):
            continue
        script = (
            "BEGIN IMMEDIATE;\n"
            "CREATE TABLE IF NOT EXISTS schema_version (\n"
            "    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);\n"
            f"{sql}\n"
            f"INSERT INTO schema_version VALUES ({number}, '{name}', {time.time()!r});\n"
            "COMMIT;"
        )
        try:
            conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        version = number
    return version
