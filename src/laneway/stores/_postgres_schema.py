"""The PostgreSQL store's versioned migrations, and clear errors for connecting.

Migrations are the files ``migrations/postgres/NNNN_name.sql``, applied in
order in one transaction together with their ``schema_version`` rows, so a
database is always at exactly one known version. Nodes that start together
serialize on an advisory lock, so exactly one applies them.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import asyncpg

from .._errors import StoreError
from ._options import migration_files

__all__ = ["connect", "current_version", "migrate"]

_CONNECT_TIMEOUT = 10.0


def _where(dsn: str) -> str:
    return dsn.split("@", 1)[-1].split("?", 1)[0]


async def connect(
    dsn: str, schema: str, *, role: str = "laneway", **kwargs: Any
) -> asyncpg.Connection:
    """A connection whose ``search_path`` is ``schema``; a ``StoreError`` that says why not.

    ``role`` is its ``application_name``, so ``pg_stat_activity`` shows what each one does.
    """
    settings = {"search_path": schema, "application_name": role}
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, timeout=_CONNECT_TIMEOUT, server_settings=settings, **kwargs
        )
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise StoreError(f"PostgreSQL at {_where(dsn)} refused the credentials: {exc}") from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise StoreError(f"PostgreSQL at {_where(dsn)}: {exc}") from None
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
        raise StoreError(
            f"cannot reach PostgreSQL at {_where(dsn)}: {exc or type(exc).__name__}"
        ) from None
    except asyncpg.PostgresError as exc:
        raise StoreError(f"PostgreSQL at {_where(dsn)}: {exc}") from None
    return conn


async def current_version(conn: asyncpg.Connection, schema: str) -> int:
    exists = await conn.fetchval(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = $1"
        " AND table_name = 'schema_version'",
        schema,
    )
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, schema: str, *, upto: int | None = None) -> int:
    """Create ``schema`` if needed and apply the migrations it lacks; returns its version."""
    known = migration_files("postgres")
    newest = known[-1][0] if known else 0
    async with conn.transaction():
        # One key per schema: nodes starting together take turns, schemas do not.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(schema.encode()))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path = "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at double precision NOT NULL)"
        )
        version = await current_version(conn, schema)
        if version > newest:
            raise StoreError(
                f"the database schema {schema!r} is at version {version}, newer than this "
                f"laneway knows ({newest}); upgrade laneway"
            )
        for number, name, sql in known:
            if number <= version or (upto is not None and number > upto):
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_version VALUES ($1, $2, $3)", number, name, time.time()
            )
            version = number
    return version
