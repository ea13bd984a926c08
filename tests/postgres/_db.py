"""Direct connections to a test store's schema (to see what is committed), lease
waits, and a node process to kill."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from laneway.stores._postgres_settings import parse_url

from .._helpers import SRC

NODE = Path(__file__).with_name("_node.py")


async def connect(url: str) -> asyncpg.Connection:
    """A plain connection whose search_path is the URL's schema."""
    settings = parse_url(url)
    conn: asyncpg.Connection = await asyncpg.connect(
        settings.dsn, server_settings={"search_path": settings.schema}
    )
    return conn


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def wait_lapsed(url: str, epoch: int) -> None:
    """Until the server's clock is past the lease of ``epoch`` (or it is gone)."""
    for _ in range(200):
        rows = await fetch(
            url,
            "SELECT 1 FROM nodes WHERE epoch = $1"
            " AND expires_at >= extract(epoch FROM clock_timestamp())",
            epoch,
        )
        if not rows:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the lease of epoch {epoch} never lapsed")


async def killed_node(url: str, session: str) -> tuple[str, int]:
    """Run ``_node.py`` until its attempt is running, then SIGKILL it: (job id, its epoch)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(NODE), url, session,
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    finally:
        proc.kill()
        await proc.wait()
    job_id, epoch = line.decode().split()
    return job_id, int(epoch)
