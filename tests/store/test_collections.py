"""Collections under one key (what one person or client holds) and the
namespace listing, on every backend; on Redis, neither walks the keyspace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.observability.metrics import REGISTRY
from sidecar.store import Store, open_store
from sidecar.store.instrumented import InstrumentedStore
from tools.processes import Process

pytestmark = pytest.mark.anyio


async def test_a_collection_holds_its_members_by_name(store: Store) -> None:
    assert await store.members("grants_of", "ada") == []
    await store.add_member("grants_of", "ada", "g2", {"client": "notes"})
    await store.add_member("grants_of", "ada", "g1", {"client": "notes"})
    await store.add_member("grants_of", "bob", "g3", {"client": "notes"})
    assert await store.members("grants_of", "ada") == [
        ("g1", {"client": "notes"}),
        ("g2", {"client": "notes"}),
    ]
    await store.add_member("grants_of", "ada", "g1", {"client": "mail"})  # replaced
    await store.remove_member("grants_of", "ada", "g2")
    await store.remove_member("grants_of", "ada", "absent")
    assert await store.members("grants_of", "ada") == [("g1", {"client": "mail"})]
    assert await store.members("grants_of", "bob") == [("g3", {"client": "notes"})]
    assert await store.members("other", "ada") == []


async def test_a_collection_and_a_record_of_one_key_are_apart(store: Store) -> None:
    await store.put("ns", "k", {"record": True})
    await store.add_member("ns", "k", "m", {"member": True})
    assert await store.get("ns", "k") == {"record": True}
    assert await store.members("ns", "k") == [("m", {"member": True})]
    assert await store.scan("ns") == [("k", {"record": True})]
    await store.delete("ns", "k")
    assert await store.members("ns", "k") == [("m", {"member": True})]


async def test_each_member_expires_on_its_own(store: Store) -> None:
    await store.add_member("c", "k", "short", {"v": 1}, ttl=0.05)
    await store.add_member("c", "k", "long", {"v": 2}, ttl=30)
    await store.add_member("c", "k", "kept", {"v": 3})
    await asyncio.sleep(0.1)
    assert await store.members("c", "k") == [("kept", {"v": 3}), ("long", {"v": 2})]
    await store.add_member("c", "k", "short", {"v": 4}, ttl=30)  # back, fresh
    assert [m for m, _ in await store.members("c", "k")] == ["kept", "long", "short"]


async def test_concurrent_additions_to_one_collection_are_all_kept(store: Store) -> None:
    await asyncio.gather(*(store.add_member("c", "k", f"m{i:02}", {"i": i}) for i in range(50)))
    assert [m for m, _ in await store.members("c", "k")] == [f"m{i:02}" for i in range(50)]


async def test_a_namespace_lists_what_was_put_swapped_and_kept(store: Store) -> None:
    await store.put("clients", "a", {"n": 1})
    await store.put_if_absent("clients", "b", {"n": 2})
    await store.put_if_absent("clients", "b", {"n": 9})  # not stored
    await store.swap("clients", "c", {"n": 3})
    await store.put("clients", "d", {"n": 4})
    await store.delete("clients", "d")
    await store.put("clients", "e", {"n": 5})
    assert await store.take("clients", "e") == {"n": 5}
    await store.put("clients", "f", {"n": 6}, ttl=0.05)
    await store.put("other", "a", {"n": 0})
    await asyncio.sleep(0.1)
    assert sorted(await store.scan("clients")) == [
        ("a", {"n": 1}),
        ("b", {"n": 2}),
        ("c", {"n": 3}),
    ]


async def test_the_instrumented_store_times_collection_operations() -> None:
    store = InstrumentedStore(open_store("memory://"))
    await store.open()

    def count(op: str) -> float:
        return REGISTRY.get_sample_value("sidecar_store_duration_seconds_count", {"op": op}) or 0

    before = {op: count(op) for op in ("add_member", "remove_member", "members")}
    await store.add_member("c", "k", "m", {"v": 1}, ttl=10)
    assert await store.members("c", "k") == [("m", {"v": 1})]
    await store.remove_member("c", "k", "m")
    assert await store.members("c", "k") == []
    assert count("add_member") == before["add_member"] + 1
    assert count("remove_member") == before["remove_member"] + 1
    assert count("members") == before["members"] + 2
    await store.close()


async def test_sqlite_keeps_collections_across_reopen_and_purges_expired_members(
    tmp_path: Path,
) -> None:
    from sidecar.store.sqlite import SQLiteStore

    url = f"sqlite:///{tmp_path}/c.db"
    first = SQLiteStore(url)
    await first.open()
    await first.add_member("c", "k", "kept", {"v": 1})
    await first.add_member("c", "k", "gone", {"v": 2}, ttl=0.01)
    await asyncio.sleep(0.05)
    assert await first.purge_expired() == 1
    await first.close()
    second = SQLiteStore(url)
    await second.open()
    assert await second.members("c", "k") == [("kept", {"v": 1})]
    await second.close()


async def test_sqlite_reads_a_collection_through_its_primary_key(tmp_path: Path) -> None:
    from sidecar.store.sqlite import SQLiteStore

    s = SQLiteStore(f"sqlite:///{tmp_path}/plan.db")
    await s.open()
    plan = await s._run(
        lambda: s._db.execute(
            "EXPLAIN QUERY PLAN SELECT member, value FROM members"
            " WHERE ns = ? AND key = ? ORDER BY member",
            ("c", "k"),
        ).fetchall()
    )
    assert any("USING PRIMARY KEY" in row[-1] for row in plan), plan
    await s.close()


async def _redis(server: Process, db: int) -> Store:
    s = open_store(f"redis://127.0.0.1:{server.port}/{db}")
    await s.open()
    await s.r.flushdb()  # type: ignore[attr-defined]
    return s


async def test_a_redis_collection_is_one_hash_that_lives_as_long_as_its_longest_member(
    redis_server: Process,
) -> None:
    s = await _redis(redis_server, 3)
    raw = s.r  # type: ignore[attr-defined]
    name = "sidecar:grants_of:{ada}:members"
    await s.add_member("grants_of", "ada", "g1", {"v": 1}, ttl=5)
    assert await raw.type(name) == b"hash"
    assert 0 < await raw.pttl(name) <= 5_000
    await s.add_member("grants_of", "ada", "g2", {"v": 2}, ttl=60)
    assert 5_000 < await raw.pttl(name) <= 60_000
    await s.add_member("grants_of", "ada", "g3", {"v": 3}, ttl=1)  # never shortens it
    assert 5_000 < await raw.pttl(name) <= 60_000
    await s.add_member("grants_of", "ada", "g4", {"v": 4})
    assert await raw.pttl(name) == -1  # a durable member: a durable hash
    assert await raw.hlen(name) == 4
    await s.add_member("c", "k", "short", {"v": 1}, ttl=0.01)
    await s.add_member("c", "k", "kept", {"v": 2})
    await asyncio.sleep(0.05)
    assert await s.members("c", "k") == [("kept", {"v": 2})]
    assert await raw.hkeys("sidecar:c:{k}:members") == [b"kept"]  # the expired one removed
    await s.close()


async def test_redis_lists_a_namespace_from_its_index_without_scanning_the_keyspace(
    redis_server: Process,
) -> None:
    s = await _redis(redis_server, 4)
    raw = s.r  # type: ignore[attr-defined]
    # The app's own keys, sharing the Redis.
    pipe = raw.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"app:session:{i}", b"x")
    await pipe.execute()
    await s.put("clients", "c1", {"v": 1})
    assert await s.scan("clients") == [("c1", {"v": 1})]  # indexes what came before, once
    await raw.config_resetstat()
    for i in range(2, 1203):  # more than one batch
        await s.put("clients", f"c{i}", {"v": i})
    listed = await s.scan("clients")
    assert len(listed) == 1202
    assert listed[0] == ("c1", {"v": 1})
    stats = await raw.info("commandstats")
    assert "cmdstat_scan" not in stats
    assert "cmdstat_keys" not in stats
    await s.close()


async def test_redis_index_drops_expired_keys_on_the_next_write(redis_server: Process) -> None:
    s = await _redis(redis_server, 5)
    raw = s.r  # type: ignore[attr-defined]
    for i in range(20):
        await s.put("codes", f"k{i}", {"v": i}, ttl=0.02)
    assert await raw.zcard("sidecar:codes:keys") == 20
    await asyncio.sleep(0.05)
    await s.put("codes", "fresh", {"v": 0}, ttl=30)
    assert await raw.zrange("sidecar:codes:keys", 0, -1) == [b"fresh"]
    await s.delete("codes", "fresh")
    assert await raw.zcard("sidecar:codes:keys") == 0
    await s.close()


async def test_redis_records_of_the_previous_release_are_listed_after_the_upgrade(
    redis_server: Process,
) -> None:
    """The release before wrote records with no namespace index; the first
    listing indexes them once, and a second store (another replica) finds the
    work done."""
    s = await _redis(redis_server, 6)
    raw = s.r  # type: ignore[attr-defined]
    await raw.set("sidecar:clients:{old}", b'{"name":"kept"}')
    await raw.set("sidecar:user_grants:abc:{g1}", b'{"grant_id":"g1"}', px=60_000)
    await raw.set("sidecar:rl:{ip}", b"3")  # a counter, not a record
    await raw.set("app:clients:{x}", b'{"not":"ours"}')
    assert await s.scan("clients") == [("old", {"name": "kept"})]
    assert await s.scan("user_grants:abc") == [("g1", {"grant_id": "g1"})]
    assert await s.scan("rl") == []
    assert 0 < await raw.zscore("sidecar:user_grants:abc:keys", "g1") < float("inf")
    assert await raw.exists("sidecar:migrations:namespace-index")
    replica = open_store(f"redis://127.0.0.1:{redis_server.port}/6")
    await replica.open()
    await raw.config_resetstat()
    assert await replica.scan("clients") == [("old", {"name": "kept"})]
    assert "cmdstat_scan" not in await raw.info("commandstats")
    await replica.close()
    await s.close()
