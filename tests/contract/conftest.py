"""Stores under the contract suite: one kit per backend, chosen by a fixture param.

A backend joins the suite by adding a ``StoreKit`` subclass and its name to
``KITS``: the suite then runs every contract test against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from laneway import JobInfo
from laneway.stores import MemoryStore, Store, open_store
from laneway.stores._sqlite import SQLiteStore


class StoreKit:
    """Makes opened stores of one backend and reopens them as a restart would."""

    name = ""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp_path = tmp_path
        self.request = request
        self.opened: list[Store] = []

    def make(self) -> Store:
        raise NotImplementedError

    async def open(self) -> Store:
        store = self.make()
        await store.open()
        self.opened.append(store)
        return store

    async def reopen(self, store: Store) -> tuple[Store, list[JobInfo]]:
        """Close ``store`` and open the same data again; returns the unfinished jobs."""
        await store.close()
        again = self.make()
        unfinished = await again.open()
        self.opened.append(again)
        return again, unfinished

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


class MemoryKit(StoreKit):
    """The memory store keeps its data in the instance, so a restart reuses it."""

    name = "memory"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self._store = MemoryStore()

    def make(self) -> Store:
        return self._store


class SQLiteKit(StoreKit):
    name = "sqlite"

    def make(self) -> Store:
        return SQLiteStore(f"sqlite:///{self.tmp_path}/contract.db")


class PostgresKit(StoreKit):
    """A schema of its own on the session's PostgreSQL server (see ``postgres_url``)."""

    name = "postgresql"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.url: str = request.getfixturevalue("postgres_url")

    def make(self) -> Store:
        return open_store(self.url)


KITS: dict[str, type[StoreKit]] = {
    "memory": MemoryKit,
    "sqlite": SQLiteKit,
    "postgresql": PostgresKit,
}


@pytest.fixture(params=sorted(KITS))
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreKit]:
    made = KITS[request.param](tmp_path, request)
    try:
        yield made
    finally:
        await made.close_all()


@pytest.fixture
async def store(kit: StoreKit) -> Store:
    """An opened store (closed by ``kit`` at teardown)."""
    return await kit.open()
