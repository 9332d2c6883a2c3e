"""Choosing a store backend by its URL's scheme; each backend is imported
only when chosen, so a SQLite deployment never imports redis-py."""

from __future__ import annotations

from sidecar.store.base import Store


def open_store(url: str) -> Store:
    """The backend for a store URL (not yet opened)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from sidecar.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from sidecar.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        from sidecar.store.redis import RedisStore

        return RedisStore(url)
    raise ValueError(
        f"{scheme}:// is not supported by this version yet; use sqlite:/// or memory://"
    )
