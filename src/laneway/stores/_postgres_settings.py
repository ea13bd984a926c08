"""PostgreSQL store settings, read from the store URL.

``postgresql://user:pass@host:port/db?lease=30s&poll=1s&pool=10&schema=laneway&node=NAME&capacity=N``
(also ``postgres://``). laneway's own options are taken out of the query
string; whatever is left (``sslmode=...`` and the like) goes to the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import ConfigError
from ._options import parse_duration, positive_int

__all__ = ["PostgresSettings", "parse_url"]

_SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """How a ``postgresql://`` store behaves; every field but ``dsn`` is a URL option.

    - ``lease``: how long a node's claim on its running attempts lasts without
      a heartbeat (heartbeats come every ``lease / 3``). A dead node's turns run
      again this long after it died.
    - ``poll``: the fallback poll for work and events when no notification
      comes (LISTEN/NOTIFY is only a hint); jittered.
    - ``pool``: connections for reads (the writer, the lease keeper and the
      listener have one each).
    - ``schema``: the schema holding laneway's tables (created if missing).
    - ``node``: this node's stable name. A node restarted under the same name
      takes its earlier attempts back at once instead of after the lease; two
      live processes must never share one. Default: a new name per process.
    - ``batch_max``: most writes committed in one transaction.
    - ``capacity``: most attempts this node runs at once (its claims never ask
      for more); the shared lanes' caps still hold across the cluster.
    """

    dsn: str
    lease: float = 30.0
    poll: float = 1.0
    pool: int = 10
    schema: str = "public"
    node: str | None = None
    batch_max: int = 2048
    capacity: int = 256


def _duration(name: str, value: Any) -> float:
    """As the sqlite store's durations (``30``, ``90s``, ``2m``), plus ``ms`` for short polls."""
    text = str(value).strip().lower()
    if text.endswith("ms") and text[:-2].replace(".", "", 1).isdigit():
        value = float(text[:-2]) / 1000
    try:
        seconds = parse_duration(name, value)
    except ConfigError:
        seconds = None
    if seconds is None:
        raise ConfigError(
            f"postgresql store: {name} must be a duration such as 30s or 2m, got {value!r}"
        )
    return seconds


def _setting(settings: PostgresSettings, name: str, value: Any) -> PostgresSettings:
    if name == "lease":
        return replace(settings, lease=_duration(name, value))
    if name == "poll":
        return replace(settings, poll=_duration(name, value))
    if name == "pool":
        return replace(settings, pool=positive_int(name, value, "postgresql store"))
    if name == "capacity":
        return replace(settings, capacity=positive_int(name, value, "postgresql store"))
    if name == "batch_max":
        return replace(settings, batch_max=positive_int(name, value, "postgresql store"))
    if name == "schema":
        schema = str(value)
        if not _IDENTIFIER.match(schema):
            raise ConfigError(
                f"postgresql store: schema must be a lower-case SQL identifier, got {value!r}"
            )
        return replace(settings, schema=schema)
    if name == "node":
        node = str(value)
        if not 0 < len(node) <= 200:
            raise ConfigError(f"postgresql store: node must be 1-200 characters, got {value!r}")
        return replace(settings, node=node)
    raise KeyError(name)


def parse_url(url: str, **overrides: Any) -> PostgresSettings:
    """The settings in ``url``; keyword overrides win."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES or not parts.netloc:
        raise ConfigError(
            f"postgresql store URL must look like postgresql://user:pass@host:port/db, got {url!r}"
        )
    rest: list[tuple[str, str]] = []
    settings = PostgresSettings(dsn="")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            settings = _setting(settings, name, value)
        except KeyError:
            rest.append((name, value))
    for name, value in overrides.items():
        try:
            settings = _setting(settings, name, value)
        except KeyError:
            raise ConfigError(f"postgresql store: unknown setting {name!r}") from None
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return replace(settings, dsn=dsn)
