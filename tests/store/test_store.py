"""The store's atomic operations hold on every backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.store import Store, StoreUnavailable, open_store
from tools.processes import Process, free_port

pytestmark = pytest.mark.anyio


async def test_records_round_trip_and_expire(store: Store) -> None:
    await store.put("ns", "a", {"x": 1})
    await store.put("ns", "b", {"x": 2}, ttl=0.05)
    assert await store.get("ns", "a") == {"x": 1}
    assert await store.get("ns", "b") == {"x": 2}
    await asyncio.sleep(0.1)
    assert await store.get("ns", "b") is None
    assert await store.scan("ns") == [("a", {"x": 1})]


async def test_one_hundred_concurrent_swaps_see_the_fresh_record_exactly_once(store: Store) -> None:
    await store.put("codes", "c1", {"used": False})
    results = await asyncio.gather(*(store.swap("codes", "c1", {"used": True}) for _ in range(100)))
    fresh = [r for r in results if r == {"used": False}]
    assert len(fresh) == 1
    assert all(r == {"used": True} for r in results if r is not fresh[0])


async def test_take_returns_a_record_once(store: Store) -> None:
    await store.put("pending", "p", {"v": 1})
    results = await asyncio.gather(*(store.take("pending", "p") for _ in range(20)))
    assert results.count({"v": 1}) == 1
    assert await store.get("pending", "p") is None


async def test_put_if_absent_stores_only_the_first(store: Store) -> None:
    results = await asyncio.gather(*(store.put_if_absent("once", "k", {"i": i}) for i in range(20)))
    assert results.count(True) == 1


async def test_counters_count_and_expire(store: Store) -> None:
    counts = await asyncio.gather(*(store.incr("rl", "ip", ttl=0.2) for _ in range(10)))
    assert sorted(counts) == list(range(1, 11))
    await asyncio.sleep(0.3)
    assert await store.incr("rl", "ip", ttl=0.2) == 1


async def test_sqlite_keeps_records_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/durable.db"
    first = open_store(url)
    await first.open()
    await first.put("clients", "c", {"name": "kept"})
    await first.close()
    second = open_store(url)
    await second.open()
    assert await second.get("clients", "c") == {"name": "kept"}
    await second.close()


async def test_sqlite_purges_expired_records(tmp_path: Path) -> None:
    from sidecar.store.sqlite import SQLiteStore

    s = SQLiteStore(f"sqlite:///{tmp_path}/p.db")
    await s.open()
    await s.put("ns", "gone", {}, ttl=0.01)
    await s.put("ns", "kept", {})
    await asyncio.sleep(0.05)
    assert await s.purge_expired() == 1
    await s.close()


async def test_redis_keys_carry_the_prefix_and_expire_in_redis(redis_server: Process) -> None:
    s = open_store(f"redis://127.0.0.1:{redis_server.port}/1")
    await s.open()
    await s.put("codes", "abc", {"v": 1}, ttl=30)
    raw = s.r  # type: ignore[attr-defined]
    assert await raw.exists("sidecar:codes:{abc}")
    assert 0 < await raw.pttl("sidecar:codes:{abc}") <= 30_000
    await s.put("clients", "c1", {"v": 1})
    assert await raw.pttl("sidecar:clients:{c1}") == -1  # durable
    assert await s.scan("clients") == [("c1", {"v": 1})]
    await s.close()


async def test_an_unreachable_redis_raises_store_unavailable() -> None:
    s = open_store(f"redis://127.0.0.1:{free_port()}/0")
    await s.open()
    with pytest.raises(StoreUnavailable):
        await s.get("ns", "k")
    with pytest.raises(StoreUnavailable):
        await s.ping()
    await s.close()


async def test_a_persons_grants_are_indexed_listed_and_ended_on_every_backend(
    store: Store, tmp_path: Path
) -> None:
    """The connected-apps page and `sidecar grants`: the person -> grants
    index is one record per grant (one command per write on Redis)."""
    from sidecar.config import load_settings
    from sidecar.oauth.consents import Consents
    from sidecar.oauth.grants import Grants
    from sidecar.oauth.records import Grant

    settings = load_settings(env={"SIDECAR_DATA_DIR": str(tmp_path / "keys")})
    consents = Consents(settings, store)
    grants = Grants(settings, store, consents)
    for grant_id, sub, client in (
        ("g1", "ada", "notes"),
        ("g2", "ada", "notes"),
        ("g3", "bob", "notes"),
    ):
        await grants.start_grant(
            Grant(grant_id, client, sub, scope=("openid",), resource=settings.public_url)
        )
    await consents.remember_consent("ada", "notes", settings.public_url, ["openid"])
    await grants.note_refresh("g2")
    listed = await grants.grants_of("ada")
    assert [g.grant_id for g in listed] == ["g1", "g2"]
    assert listed[1].last_refreshed is not None
    assert {g.grant_id for g in await grants.all_grants()} == {"g1", "g2", "g3"}
    for grant in listed:
        await grants.end_grant(grant)
    assert await grants.grants_of("ada") == []
    assert await grants.is_grant_revoked("g1")
    assert await grants.is_grant_revoked("g2")
    assert not await grants.is_grant_revoked("g3")  # another person's grant of the same client
    assert not await consents.remembered_consent("ada", "notes", settings.public_url, ["openid"])
    assert not await consents.has_approved("ada", "notes")
