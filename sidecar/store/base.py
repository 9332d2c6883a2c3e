"""The store interface: a few atomic operations on JSON records by namespace.

Every single-use or rotating record (codes, refresh tokens, pending
authorizations) is redeemed with one atomic ``swap`` or ``take``, so two
replicas can never both redeem it; the Redis backend maps each operation to
one Redis command (GET, SET EX, SET NX, SET GET, GETDEL, INCR).

What one person or one client holds is a *collection* under one key
(``add_member``, ``remove_member``, ``members``): one Redis hash, rows of one
indexed SQLite table, so reading it costs what it holds, never the keyspace
(README, "Scale").
"""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error (503 upstream of it)."""


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def get(self, ns: str, key: str) -> Record | None: ...

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None: ...

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        """Store only when no live record exists; True when stored."""
        ...

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        """Atomically replace a record and return what was there (None if nothing)."""
        ...

    async def take(self, ns: str, key: str) -> Record | None:
        """Atomically read and delete a record."""
        ...

    async def delete(self, ns: str, key: str) -> None: ...

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        """Add one to a counter that expires ``ttl`` seconds after it was created."""
        ...

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        """Every live record of a namespace (counters are not records).

        Walks the namespace's own keys, never the whole keyspace; the list is
        whole, so keep it to namespaces that stay small (clients). What one
        person or client holds belongs in a collection."""
        ...

    async def add_member(
        self, ns: str, key: str, member: str, value: Record, ttl: float | None = None
    ) -> None:
        """Put ``member`` (with its own expiry) into the collection ``key``;
        a member already there is replaced."""
        ...

    async def remove_member(self, ns: str, key: str, member: str) -> None:
        """Take ``member`` out of the collection ``key`` (nothing if absent)."""
        ...

    async def members(self, ns: str, key: str) -> list[tuple[str, Record]]:
        """The live members of the collection ``key``, by member name."""
        ...
