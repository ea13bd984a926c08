"""SQLite store settings (from the URL) and the versioned schema migrations.

Migrations are the files ``migrations/sqlite/NNNN_name.sql``, applied in
order, each in its own transaction together with its ``schema_version`` row,
so a database is always at exactly one known version.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._errors import ConfigError, StoreError
from ._options import DAY, migration_files, parse_duration, positive_int

__all__ = ["SQLiteSettings", "migrate", "parse_url"]

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
        return replace(settings, batch_max=positive_int(name, value, "sqlite store"))
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


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, upto: int | None = None) -> int:
    """Apply the migrations the database lacks; returns the resulting version."""
    known = migration_files("sqlite")
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
