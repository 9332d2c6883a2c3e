"""``memory://``: one process, nothing kept; for tests and throwaway runs.

Atomic because every operation completes without awaiting.
"""

from __future__ import annotations

import copy
import time

from sidecar.store.base import Record


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], tuple[Record, float | None]] = {}
        self._collections: dict[tuple[str, str], dict[str, tuple[Record, float | None]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    def _live(self, ns: str, key: str) -> Record | None:
        item = self._data.get((ns, key))
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.time():
            del self._data[(ns, key)]
            return None
        return value

    def _set(self, ns: str, key: str, value: Record, ttl: float | None) -> None:
        expires = time.time() + ttl if ttl is not None else None
        self._data[(ns, key)] = (copy.deepcopy(value), expires)

    async def get(self, ns: str, key: str) -> Record | None:
        value = self._live(ns, key)
        return copy.deepcopy(value) if value is not None else None

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        self._set(ns, key, value, ttl)

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        if self._live(ns, key) is not None:
            return False
        self._set(ns, key, value, ttl)
        return True

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        old = self._live(ns, key)
        self._set(ns, key, value, ttl)
        return old

    async def take(self, ns: str, key: str) -> Record | None:
        old = self._live(ns, key)
        self._data.pop((ns, key), None)
        return old

    async def delete(self, ns: str, key: str) -> None:
        self._data.pop((ns, key), None)

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        current = self._live(ns, key)
        if current is None:
            self._set(ns, key, {"n": 1}, ttl)
            return 1
        current["n"] += 1
        return int(current["n"])

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        return [
            (key, copy.deepcopy(value))
            for (n, key) in list(self._data)
            if n == ns and (value := self._live(n, key)) is not None
        ]

    async def add_member(
        self, ns: str, key: str, member: str, value: Record, ttl: float | None = None
    ) -> None:
        expires = time.time() + ttl if ttl is not None else None
        self._collections.setdefault((ns, key), {})[member] = (copy.deepcopy(value), expires)

    async def remove_member(self, ns: str, key: str, member: str) -> None:
        collection = self._collections.get((ns, key))
        if collection is not None:
            collection.pop(member, None)
            if not collection:
                del self._collections[(ns, key)]

    async def members(self, ns: str, key: str) -> list[tuple[str, Record]]:
        collection = self._collections.get((ns, key))
        if collection is None:
            return []
        now = time.time()
        for member in [m for m, (_, e) in collection.items() if e is not None and e <= now]:
            del collection[member]
        if not collection:
            del self._collections[(ns, key)]
        return [(member, copy.deepcopy(value)) for member, (value, _) in sorted(collection.items())]
