"""OAuth state behind one small async interface; backends chosen by URL."""

from sidecar.store.backends import open_store
from sidecar.store.base import Record, Store, StoreUnavailable

__all__ = ["Record", "Store", "StoreUnavailable", "open_store"]
