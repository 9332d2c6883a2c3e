"""The shape a store was written in, and bringing it up to this release's.

The store records its shape as one durable record, ``meta/shape`` =
``{"version": N}``. At start-up every replica reads it and runs, in order,
each migration newer than it, then records the new version (README,
"Scale": an upgrade loses nothing). Every migration is idempotent, so
replicas starting at once may each run it and one that dies half-way is
simply run again by the next start; the version is only ever raised.

A store that cannot be reached at start-up is not fatal (readiness reports
it): the migration is retried in the background until it has run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from sidecar.store.base import Store, StoreUnavailable

META, SHAPE = "meta", "shape"
RETRY_EVERY = 5.0

log = structlog.get_logger("sidecar.store")


@dataclass(frozen=True)
class Migration:
    """What brings a store of any earlier shape to ``version``; returns how
    many records it carried over."""

    version: int
    name: str
    run: Callable[[], Awaitable[int]]


async def shape_version(store: Store) -> int:
    shape = await store.get(META, SHAPE)
    return int(shape.get("version", 0)) if shape else 0


async def migrate(store: Store, migrations: Sequence[Migration]) -> int:
    """Run what the store has not had yet; the store's version after."""
    current = await shape_version(store)
    for step in sorted(migrations, key=lambda m: m.version):
        if step.version <= current:
            continue
        carried = await step.run()
        # Read again: a replica that raced ahead may have recorded a later one.
        if await shape_version(store) < step.version:
            await store.put(META, SHAPE, {"version": step.version})
        current = step.version
        log.info("store migrated", version=step.version, migration=step.name, records=carried)
    return current


async def migrate_at_start(
    store: Store, migrations: Sequence[Migration], retry_every: float = RETRY_EVERY
) -> asyncio.Task[None] | None:
    """Migrate now; when the store is away, a task that keeps trying (cancel
    it at shutdown)."""
    try:
        await migrate(store, migrations)
        return None
    except StoreUnavailable as exc:
        log.warning("store migration postponed: the store is unavailable", error=str(exc))

    async def retry() -> None:
        while True:
            await asyncio.sleep(retry_every)
            with contextlib.suppress(StoreUnavailable):
                await migrate(store, migrations)
                return

    return asyncio.create_task(retry())
