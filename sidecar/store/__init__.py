"""OAuth state behind one small async interface; backends chosen by URL."""

from sidecar.store.base import Store, StoreUnavailable, open_store

__all__ = ["Store", "StoreUnavailable", "open_store"]
