"""What one person or client holds is one collection (README, "Scale"), on
every backend; a store written by an earlier release is migrated into it at
start-up, whichever shape it was in, as often and by as many replicas as
start; and on a Redis shared with tens of thousands of the app's keys, one
person's lookup touches only that person's collection and grants."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from sidecar.config import load_settings
from sidecar.oauth.grants import (
    GRANTS,
    GRANTS_OF_CLIENT,
    GRANTS_OF_PERSON,
    SHAPE_GRANT_COLLECTIONS,
    Grants,
    client_key,
    person_key,
    user_index,
)
from sidecar.oauth.records import Grant
from sidecar.store import Store, open_store
from sidecar.store.shape import META, SHAPE, migrate, migrate_at_start, shape_version
from tools.processes import Process

pytestmark = pytest.mark.anyio


def grants_on(store: Store, tmp_path: Path) -> Grants:
    return Grants(load_settings(env={"SIDECAR_DATA_DIR": str(tmp_path / "keys")}), store)


def grant(grant_id: str, sub: str, client_id: str, created: int = 1) -> Grant:
    return Grant(grant_id, client_id, sub, ("openid",), "https://app.example/mcp", created=created)


async def test_a_person_and_a_client_each_read_their_own_collection(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    await grants.start_grant(grant("g1", "ada", "notes", created=1))
    await grants.start_grant(grant("g2", "ada", "mail", created=2))
    await grants.start_grant(grant("g3", "bob", "notes", created=3))
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["g1", "g2"]
    assert [g.grant_id for g in await grants.grants_of_client("notes")] == ["g1", "g3"]
    assert [m for m, _ in await store.members(GRANTS_OF_PERSON, person_key("ada"))] == [
        "g1",
        "g2",
    ]
    assert await store.members(GRANTS_OF_CLIENT, client_key("notes")) == [
        ("g1", {"sub": "ada"}),
        ("g3", {"sub": "bob"}),
    ]
    ended = await grants.grants_of("ada")
    await grants.end_grant(ended[0])
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["g2"]
    assert [g.grant_id for g in await grants.grants_of_client("notes")] == ["g3"]
    # A grant revoked for a replayed token leaves both collections too.
    await grants.revoke_grant("g3")
    assert await store.members(GRANTS_OF_CLIENT, client_key("notes")) == []
    assert [m for m, _ in await store.members(GRANTS_OF_PERSON, person_key("bob"))] == []


async def test_a_grant_revoked_before_it_started_is_never_listed(
    store: Store, tmp_path: Path
) -> None:
    """A code replay that raced ahead of the first redemption revoked the
    grant before it existed; starting it then indexes nothing."""
    grants = grants_on(store, tmp_path)
    await grants.revoke_grant("g1")
    await grants.start_grant(grant("g1", "ada", "notes"))
    assert await grants.grants_of("ada") == []
    assert await store.members(GRANTS_OF_PERSON, person_key("ada")) == []


async def test_a_stale_member_is_skipped_and_dropped(store: Store, tmp_path: Path) -> None:
    grants = grants_on(store, tmp_path)
    await store.add_member(GRANTS_OF_PERSON, person_key("ada"), "gone", {"client_id": "x"})
    await grants.start_grant(grant("g1", "ada", "notes"))
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["g1"]
    assert [m for m, _ in await store.members(GRANTS_OF_PERSON, person_key("ada"))] == ["g1"]


async def write_previous_shapes(store: Store, grants: Grants) -> None:
    """What the earlier releases wrote: shape 1 (grant records alone; no
    ``created``) and shape 2 (a grant record and a record in the person's
    own namespace), and a revoked grant of each."""
    ttl = grants.settings.refresh_token_ttl
    old = {"email": None, "name": None, "scope": ["openid"], "resource": "https://a/mcp"}
    await store.put(GRANTS, "old1", {**old, "client_id": "notes", "sub": "ada", "revoked": False})
    await store.put(GRANTS, "old2", {**old, "client_id": "notes", "sub": "bob", "revoked": True})
    for grant_id, sub, client_id, revoked in (
        ("mid1", "ada", "mail", False),
        ("mid2", "ada", "notes", True),
    ):
        record = {**old, "client_id": client_id, "sub": sub, "revoked": revoked, "created": 5}
        await store.put(GRANTS, grant_id, record, ttl=ttl)
        await store.put(user_index(sub), grant_id, {"client_id": client_id}, ttl=ttl)


async def test_an_upgrade_indexes_what_each_earlier_release_wrote(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    await write_previous_shapes(store, grants)
    assert await shape_version(store) == 0
    assert await grants.grants_of("ada") == []  # not yet migrated
    assert await migrate(store, grants.migrations()) == SHAPE_GRANT_COLLECTIONS
    assert await store.get(META, SHAPE) == {"version": SHAPE_GRANT_COLLECTIONS}
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["old1", "mid1"]
    assert await grants.grants_of("bob") == []
    assert [g.grant_id for g in await grants.grants_of_client("notes")] == ["old1"]
    assert [g.grant_id for g in await grants.grants_of_client("mail")] == ["mid1"]
    # Done once: a later start reads the shape and carries nothing.
    await store.remove_member(GRANTS_OF_PERSON, person_key("ada"), "old1")
    await migrate(store, grants.migrations())
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["mid1"]


async def test_replicas_starting_at_once_each_migrate_harmlessly(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    await write_previous_shapes(store, grants)
    replicas = [grants_on(store, tmp_path) for _ in range(4)]
    versions = await asyncio.gather(*(migrate(store, r.migrations()) for r in replicas))
    assert versions == [SHAPE_GRANT_COLLECTIONS] * 4
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["old1", "mid1"]
    assert [m for m, _ in await store.members(GRANTS_OF_PERSON, person_key("ada"))] == [
        "mid1",
        "old1",
    ]


async def test_a_store_that_is_away_at_start_is_migrated_when_it_is_back(tmp_path: Path) -> None:
    from sidecar.store.base import StoreUnavailable

    class Flaky:
        """A memory store that is away for its first two reads."""

        def __init__(self) -> None:
            self.inner = open_store("memory://")
            self.away = 2

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        async def get(self, ns: str, key: str) -> object:
            if self.away:
                self.away -= 1
                raise StoreUnavailable("away")
            return await self.inner.get(ns, key)

    flaky = Flaky()
    store: Store = flaky  # type: ignore[assignment]
    grants = grants_on(store, tmp_path)
    await flaky.inner.put(
        GRANTS, "g1", {"client_id": "notes", "sub": "ada", "scope": [], "revoked": False}
    )
    task = await migrate_at_start(store, grants.migrations(), retry_every=0.01)
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert await shape_version(store) == SHAPE_GRANT_COLLECTIONS
    assert [g.grant_id for g in await grants.grants_of("ada")] == ["g1"]


FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('SET', 'app:session:' .. i, 'x')
end
return 1
"""


async def test_a_persons_lookup_on_a_shared_redis_touches_only_what_they_hold(
    redis_server: Process, tmp_path: Path
) -> None:
    """50,000 of the app's keys in the same Redis: reading one person's
    grants issues no SCAN or KEYS, and names no key but that person's
    collection and their own grant records."""
    url = f"redis://127.0.0.1:{redis_server.port}/7"
    s = open_store(url)
    await s.open()
    raw = s.r  # type: ignore[attr-defined]
    await raw.flushdb()
    await raw.eval(FILL, 0, 50_000)
    grants = grants_on(s, tmp_path)
    await migrate(s, grants.migrations())
    for i in range(3):
        await grants.start_grant(grant(f"ada{i}", "ada", "notes", created=i))
    for i in range(200):
        await grants.start_grant(grant(f"other{i}", f"person{i}", "notes"))
    await grants.note_refresh("ada1")

    watcher = open_store(url)
    await watcher.open()
    seen: list[str] = []
    async with watcher.r.monitor() as monitor:  # type: ignore[attr-defined]

        async def watch() -> None:
            while True:
                command = (await monitor.next_command())["command"]
                if "lookup-done" in command:
                    return
                seen.append(command)

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.1)
        await raw.config_resetstat()
        listed = await grants.grants_of("ada")
        stats = await raw.info("commandstats")
        await raw.echo("lookup-done")
        await asyncio.wait_for(watching, 10)
    await watcher.close()

    assert [g.grant_id for g in listed] == ["ada0", "ada1", "ada2"]
    assert "cmdstat_scan" not in stats
    assert "cmdstat_keys" not in stats
    assert "cmdstat_zscan" not in stats
    names = {n.upper() for n in (c.split(" ", 1)[0].strip('"') for c in seen)}
    # The lookup's own commands (and, inside its script, TIME, HGETALL and
    # HDEL of the collection), beside what a connection says when it opens.
    assert names <= {"EVAL", "EVALSHA", "TIME", "HGETALL", "HDEL", "GET", "MGET"} | {
        "HELLO",
        "SELECT",
        "PING",
        "CLIENT",
        "CONFIG",
        "INFO",
    }, names
    touched = {k for c in seen for k in re.findall(r"sidecar:[^\s\"]+", c)}
    allowed = {f"sidecar:{GRANTS_OF_PERSON}:{{{person_key('ada')}}}:members"} | {
        f"sidecar:{ns}:{{ada{i}}}" for ns in (GRANTS, "grant_activity") for i in range(3)
    }
    assert touched, seen
    assert touched <= allowed, touched - allowed
    await s.close()
