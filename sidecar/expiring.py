"""Small in-process memories that forget: a bounded map whose entries hold
until a time, and a watcher of files that calls back when they change. Each
replaced a hand-written copy in the rooms that use them."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """At most ``size`` entries, the least recently stored forgotten first;
    ``get`` answers an entry only until the time it was stored with (on the
    caller's clock, ``time.monotonic()`` or ``time.time()``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: K, value: V, until: float) -> None:
        self._entries[key] = (until, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _mtimes(paths: Sequence[str | os.PathLike[str]]) -> tuple[int, ...]:
    try:
        return tuple(os.stat(p).st_mtime_ns for p in paths)
    except OSError:
        return ()  # missing or half-replaced: not a change to act on


async def watch_files(
    paths: Sequence[str | os.PathLike[str]],
    on_change: Callable[[], Awaitable[None] | None],
    every: float = 2.0,
) -> None:
    """Call ``on_change`` whenever the files' modification times change
    (a key rotated, a certificate renewed), checking every ``every`` seconds;
    runs until cancelled."""
    seen = _mtimes(paths)
    while True:
        await asyncio.sleep(every)
        current = _mtimes(paths)
        if not current or current == seen:
            continue
        seen = current
        result = on_change()
        if result is not None:
            await result
