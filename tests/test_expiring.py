"""The bounded expiring map and the file watcher the rooms share."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sidecar.expiring import ExpiringCache, watch_files


def test_an_entry_holds_until_its_time_and_the_oldest_is_forgotten_past_the_size() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(size=2)
    cache.put("a", 1, until=10.0)
    assert cache.get("a", now=9.9) == 1
    assert cache.get("a", now=10.0) is None
    cache.put("b", 2, until=10.0)
    cache.put("c", 3, until=10.0)
    assert len(cache) == 2
    assert cache.get("a", now=0.0) is None  # forgotten first
    assert cache.get("c", now=0.0) == 3


def test_a_changed_file_calls_back_and_an_unchanged_one_does_not(tmp_path: Path) -> None:
    watched = tmp_path / "key.json"
    watched.write_text("one")
    calls: list[str] = []

    async def run() -> None:
        task = asyncio.create_task(
            watch_files([watched], lambda: calls.append(watched.read_text()), every=0.02)
        )
        await asyncio.sleep(0.1)
        assert calls == []
        watched.write_text("two")
        stat = watched.stat()
        os.utime(watched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        for _ in range(50):
            if calls:
                break
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(run())
    assert calls == ["two"]
