"""Job stores behind one contract, chosen by URL: ``memory://``, ``sqlite:///path``,
``postgresql://user:pass@host/db`` (needs the ``laneway[postgres]`` extra)."""

from __future__ import annotations

from .._errors import ConfigError
from ._base import Store
from ._memory import MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The store for ``url`` (not opened yet)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"store must be a URL such as 'memory://' or 'sqlite:///laneway.db', got {url!r}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore  # type: ignore[import-not-found,import-untyped,unused-ignore]

        store: Store = SQLiteStore(url)
        return store
    if scheme in ("postgresql", "postgres"):
        return _postgres_store(url)
    raise ConfigError(
        f"unknown store scheme {scheme!r} in {url!r}; use memory://, sqlite:/// or postgresql://"
    )


def _postgres_store(url: str) -> Store:
    try:
        import asyncpg  # noqa: F401 - only to tell a missing extra apart
    except ImportError:
        raise ConfigError(
            f"{url.split('://', 1)[0]}:// stores need the PostgreSQL driver: "
            "pip install 'laneway[postgres]'"
        ) from None
    from ._postgres import PostgresStore

    return PostgresStore(url)
