"""Refresh rotation as real clients use it, on every store backend: a lost
answer retried, processes racing, a late replay and an older token."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.config import load_settings
from sidecar.convex import ConvexTokens
from sidecar.keys import load_keyset
from sidecar.oauth.client_model import Client, client_from_metadata
from sidecar.oauth.clients import ClientRegistry
from sidecar.oauth.endpoints import OAuthEndpoints
from sidecar.oauth.errors import InvalidGrant, InvalidScope, InvalidTarget
from sidecar.oauth.grants import REFRESH, ROTATED, Grants
from sidecar.oauth.hashing import digest
from sidecar.oauth.ratelimit import RateLimiter
from sidecar.oauth.records import Grant, Profile
from sidecar.oauth.tokens import Tokens
from sidecar.store import Store

pytestmark = pytest.mark.anyio


TOKENS: dict[Grants, Tokens] = {}  # what each test's grants sign with


def grants_on(store: Store, tmp_path: Path, grace: int = 30) -> Grants:
    settings = load_settings(
        env={
            "SIDECAR_DATA_DIR": str(tmp_path / "keys"),
            "SIDECAR_REFRESH_REUSE_GRACE_SECONDS": str(grace),
        }
    )
    grants = Grants(settings, store)
    TOKENS[grants] = Tokens(grants, load_keyset(settings))
    return grants


async def first_pair(grants: Grants, grant_id: str = "g1", sub: str = "ada") -> str:
    await grants.start_grant(
        Grant(grant_id, "c", sub, scope=("openid",), resource=grants.settings.public_url)
    )
    issued = await TOKENS[grants].issue(
        grant_id=grant_id,
        client_id="c",
        sub=sub,
        scope=["openid"],
        resource=grants.settings.public_url,
        with_refresh=True,
        user=Profile(),
        with_id_token=False,
    )
    assert issued.refresh_token
    return issued.refresh_token


async def refresh(grants: Grants, token: str) -> str:
    """What the token endpoint does with a refresh token: rotate, then store
    the successor's record as issue() does."""
    rotation = await grants.rotate_refresh(token, "c")
    issued = await TOKENS[grants].issue(
        grant_id=rotation.record.grant_id,
        client_id="c",
        sub=rotation.record.sub,
        scope=list(rotation.record.scope),
        resource=rotation.record.resource,
        with_refresh=True,
        user=Profile(),
        with_id_token=False,
        refresh_token=rotation.successor,
    )
    assert issued.refresh_token == rotation.successor
    return rotation.successor


async def test_a_retried_refresh_gets_the_same_successor_and_keeps_the_grant(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    rt1 = await first_pair(grants)
    rt2 = await refresh(grants, rt1)
    again = await refresh(grants, rt1)  # the answer was lost; the client retries
    assert again == rt2
    assert not await grants.is_grant_revoked("g1")
    rt3 = await refresh(grants, rt2)  # and the session goes on
    assert rt3 not in (rt1, rt2)


async def test_racing_refreshes_all_end_up_holding_one_live_token(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    rt1 = await first_pair(grants)
    answers = await asyncio.gather(*(refresh(grants, rt1) for _ in range(20)))
    assert len(set(answers)) == 1
    assert not await grants.is_grant_revoked("g1")
    assert await refresh(grants, answers[0])


async def test_a_replay_after_the_grace_period_revokes_the_grant(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path, grace=1)
    rt1 = await first_pair(grants)
    rt2 = await refresh(grants, rt1)
    await asyncio.sleep(1.3)
    with pytest.raises(InvalidGrant):
        await refresh(grants, rt1)
    assert await grants.is_grant_revoked("g1")
    with pytest.raises(InvalidGrant):
        await refresh(grants, rt2)


async def test_an_older_token_reused_within_the_grace_period_revokes_the_grant(
    store: Store, tmp_path: Path
) -> None:
    grants = grants_on(store, tmp_path)
    rt1 = await first_pair(grants)
    rt2 = await refresh(grants, rt1)
    await refresh(grants, rt2)  # rt1 is now two rotations old
    with pytest.raises(InvalidGrant):
        await refresh(grants, rt1)
    assert await grants.is_grant_revoked("g1")


async def test_strict_mode_revokes_on_any_reuse(store: Store, tmp_path: Path) -> None:
    grants = grants_on(store, tmp_path, grace=0)
    rt1 = await first_pair(grants)
    await refresh(grants, rt1)
    with pytest.raises(InvalidGrant):
        await refresh(grants, rt1)
    assert await grants.is_grant_revoked("g1")


async def test_a_reuse_revokes_only_its_own_grant(store: Store, tmp_path: Path) -> None:
    """Two machines of one person with one (CIMD) client id, and another
    person of the same client: three grants, one replayed."""
    grants = grants_on(store, tmp_path, grace=0)
    laptop = await first_pair(grants, "laptop", "ada")
    desktop = await first_pair(grants, "desktop", "ada")
    someone = await first_pair(grants, "someone", "bob")
    await refresh(grants, laptop)
    with pytest.raises(InvalidGrant):
        await refresh(grants, laptop)
    assert await grants.is_grant_revoked("laptop")
    assert not await grants.is_grant_revoked("desktop")
    assert not await grants.is_grant_revoked("someone")
    assert await refresh(grants, desktop)
    assert await refresh(grants, someone)


async def test_the_store_keeps_no_usable_refresh_token(store: Store, tmp_path: Path) -> None:
    grants = grants_on(store, tmp_path)
    rt1 = await first_pair(grants)
    rt2 = await refresh(grants, rt1)
    rotation = await store.get(ROTATED, digest(rt1))
    assert rotation is not None
    dumped = repr(rotation) + repr(await store.scan(REFRESH)) + repr(await store.scan(ROTATED))
    for token in (rt1, rt2):
        assert token not in dumped
        assert token.split(".", 1)[1] not in dumped
    started = time.monotonic()
    assert await refresh(grants, rt1) == rt2  # only the holder of rt1 can read it
    assert time.monotonic() - started < 5


def endpoints_on(grants: Grants) -> tuple[OAuthEndpoints, Client]:
    """The token endpoint's refresh, as /oauth/token runs it, and its client."""
    tokens = TOKENS[grants]
    endpoints = OAuthEndpoints(
        grants.settings,
        ClientRegistry(grants.store),
        grants,
        tokens,
        tokens.keys,
        RateLimiter(grants.store),
        ConvexTokens(grants.settings, tokens.keys),
    )
    client, _ = client_from_metadata(
        {
            "client_name": "c",
            "redirect_uris": ["http://127.0.0.1:1/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        },
        grants.settings.scopes,
    )
    return endpoints, replace(client, client_id="c")


@pytest.mark.parametrize(
    ("asked", "refused"),
    [
        ({"scope": "openid email"}, InvalidScope),
        ({"resource": "https://elsewhere.example/mcp"}, InvalidTarget),
    ],
)
async def test_a_refused_refresh_consumes_nothing(
    store: Store, tmp_path: Path, asked: dict[str, str], refused: type[Exception]
) -> None:
    """A refresh refused for what it asks (a wider scope, another resource)
    leaves its token as it was: with no grace at all, the same token then
    refreshes and the grant lives on."""
    grants = grants_on(store, tmp_path, grace=0)
    endpoints, client = endpoints_on(grants)
    rt1 = await first_pair(grants)
    with pytest.raises(refused):
        await endpoints.refresh({"refresh_token": rt1, **asked}, client)
    assert await store.get(ROTATED, digest(rt1)) is None
    issued = await endpoints.refresh({"refresh_token": rt1}, client)
    assert issued.refresh_token
    assert issued.refresh_token != rt1
    assert issued.scope == ["openid"]
    assert not await grants.is_grant_revoked("g1")
    narrowed = await endpoints.refresh(
        {"refresh_token": issued.refresh_token, "scope": "openid"}, client
    )
    assert narrowed.refresh_token
