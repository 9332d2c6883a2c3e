"""Three sidecar processes sharing one real redis-server: single use, rotation,
rate limits and revocation hold across replicas, and faults lose nothing."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from sidecar.config import Settings, load_settings
from sidecar.keys import load_keyset
from sidecar.oauth.grants import Grants
from sidecar.oauth.records import AuthorizationCode, Grant, Profile
from sidecar.oauth.tokens import Tokens
from sidecar.store import open_store
from tools import fixtures
from tools.oauth import pkce_pair
from tools.processes import Process, free_port, start_redis, start_sidecar

REDIRECT = "http://127.0.0.1:1/cb"


@dataclass
class Cluster:
    redis: Process
    replicas: list[Process]
    env: dict[str, str]
    public_url: str

    @property
    def settings(self) -> Settings:
        return load_settings(env=self.env)

    def url(self, i: int) -> str:
        return self.replicas[i % len(self.replicas)].url

    async def mint(self, client_id: str, n: int = 1) -> tuple[list[str], list[str], str]:
        """Codes and refresh tokens written straight into the shared store, as
        /oauth/authorize and /oauth/token would write them."""
        settings = self.settings
        store = open_store(settings.store_url)
        await store.open()
        grants = Grants(settings, store)
        tokens = Tokens(grants, load_keyset(settings))
        verifier, challenge = pkce_pair()
        codes, refresh = [], []
        for i in range(n):
            codes.append(
                await grants.new_code(
                    AuthorizationCode(
                        client_id=client_id,
                        redirect_uri=REDIRECT,
                        code_challenge=challenge,
                        scope=("openid", "email"),
                        resource=settings.default_resource.url,
                        nonce=None,
                        sub=f"user-{i}",
                        user=Profile(email=f"u{i}@example.com"),
                        auth_time=1,
                    )
                )
            )
            gid = f"grant-{i}-{time.monotonic_ns()}"
            await grants.start_grant(Grant(grant_id=gid, client_id=client_id, sub=f"user-{i}"))
            issued = await tokens.issue(
                grant_id=gid,
                client_id=client_id,
                sub=f"user-{i}",
                scope=["openid", "email"],
                resource=settings.default_resource.url,
                with_refresh=True,
                user=Profile(),
                with_id_token=False,
            )
            assert issued.refresh_token
            refresh.append(issued.refresh_token)
        await store.close()
        return codes, refresh, verifier

    def register(self, i: int = 0) -> str:
        r = httpx.post(
            self.url(i) + "/oauth/register",
            json={
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["client_id"])


def start_cluster(upstream: Process, replicas: int = 3, **extra: str) -> Cluster:
    redis = start_redis()
    public = f"http://127.0.0.1:{free_port()}"  # the load balancer's address
    env = {
        "SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis.port}/0",
        "SIDECAR_PUBLIC_URL": public,
        "SIDECAR_RESOURCES": "/api/mcp",
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": fixtures.SITE_URL,
        "SIDECAR_REGISTRATION_RATE_LIMIT": "1000",
        "SIDECAR_REVOCATION_CACHE_SECONDS": "0",
        **extra,
    }
    started: list[Process] = []
    try:
        for _ in range(replicas):
            started.append(start_sidecar(upstream.url, **env))
    except Exception:
        for p in started:
            p.stop()
        redis.stop()
        raise
    return Cluster(redis, started, env, public)


@pytest.fixture(scope="module")
def cluster(upstream: Process) -> Iterator[Cluster]:
    c = start_cluster(upstream)
    yield c
    for p in c.replicas:
        p.stop()
    c.redis.stop()


async def post_all(requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(*(client.post(url, data=form) for url, form in requests))


def test_one_hundred_concurrent_redemptions_across_replicas_succeed_exactly_once(
    cluster: Cluster,
) -> None:
    client_id = cluster.register()
    [code], _, verifier = asyncio.run(cluster.mint(client_id))
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    responses = asyncio.run(post_all([(cluster.url(i) + "/oauth/token", form) for i in range(100)]))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 400: 99}, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 400)
    winner = next(r for r in responses if r.status_code == 200).json()
    # The replays revoked what the one redemption issued, on every replica.
    for i in range(3):
        info = httpx.get(
            cluster.url(i) + "/oauth/userinfo",
            headers={"Authorization": f"Bearer {winner['access_token']}"},
        )
        assert info.status_code == 401
    again = httpx.post(
        cluster.url(1) + "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": winner["refresh_token"],
            "client_id": client_id,
        },
    )
    assert again.json()["error"] == "invalid_grant"


def test_fifty_concurrent_refreshes_across_replicas_all_get_one_and_the_same_new_token(
    cluster: Cluster,
) -> None:
    """Several processes of one client sharing a credentials file refresh at
    once, through different replicas: within the grace period every one gets
    the same successor, so none of them loses the session."""
    client_id = cluster.register()
    _, [token], _ = asyncio.run(cluster.mint(client_id))
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    responses = asyncio.run(post_all([(cluster.url(i) + "/oauth/token", form) for i in range(50)]))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50}, statuses
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1
    access = {r.json()["access_token"] for r in responses}
    assert len(access) == 50  # each racer gets its own access token
    # Afterwards exactly that token works, on any replica.
    [successor] = successors
    rotated = httpx.post(
        cluster.url(2) + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": successor, "client_id": client_id},
    )
    assert rotated.status_code == 200, rotated.text


def test_a_retry_on_another_replica_gets_the_same_token_and_an_older_one_revokes_everywhere(
    cluster: Cluster,
) -> None:
    client_id = cluster.register()
    _, [rt1], _ = asyncio.run(cluster.mint(client_id))

    def refresh(i: int, token: str) -> httpx.Response:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
        return httpx.post(cluster.url(i) + "/oauth/token", data=form)

    rt2 = refresh(0, rt1).json()["refresh_token"]
    retried = refresh(1, rt1)  # the answer from replica 0 was lost
    assert retried.status_code == 200
    assert retried.json()["refresh_token"] == rt2
    rt3 = refresh(2, rt2).json()["refresh_token"]
    older = refresh(1, rt1)  # rt1 is two rotations old now
    assert older.json()["error"] == "invalid_grant"
    for i in range(3):
        assert refresh(i, rt3).json()["error"] == "invalid_grant"


def test_a_refresh_token_reused_after_the_grace_period_revokes_the_grant_on_every_replica(
    upstream: Process,
) -> None:
    c = start_cluster(upstream, SIDECAR_REFRESH_REUSE_GRACE_SECONDS="1")
    try:
        client_id = c.register()
        _, [token], _ = asyncio.run(c.mint(client_id))
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
        pair = httpx.post(c.url(0) + "/oauth/token", data=form).json()
        time.sleep(1.3)
        late = httpx.post(c.url(1) + "/oauth/token", data=form)
        assert late.json()["error"] == "invalid_grant"
        auth = {"Authorization": f"Bearer {pair['access_token']}"}
        for i in range(3):
            again = httpx.post(
                c.url(i) + "/oauth/token",
                data={**form, "refresh_token": pair["refresh_token"]},
            )
            assert again.json()["error"] == "invalid_grant"
            assert httpx.get(c.url(i) + "/oauth/userinfo", headers=auth).status_code == 401
        # One line says which client and grant, and no token value.
        lines = [r for p in c.replicas for r in p.log_records() if "reuse" in str(r.get("event"))]
        assert len(lines) == 1
        assert lines[0]["client_id"] == client_id
        assert lines[0]["grant_id"] == token.split(".", 1)[0]
        text = "".join(p.log_text() for p in c.replicas)
        assert token not in text
        assert pair["refresh_token"] not in text
    finally:
        for p in c.replicas:
            p.stop()
        c.redis.stop()


def test_rate_limits_hold_across_replicas(upstream: Process) -> None:
    c = start_cluster(upstream, SIDECAR_REGISTRATION_RATE_LIMIT="5")
    try:
        body = {"redirect_uris": [REDIRECT]}
        codes = [httpx.post(c.url(i) + "/oauth/register", json=body).status_code for i in range(9)]
        assert Counter(codes) == {201: 5, 429: 4}
    finally:
        for p in c.replicas:
            p.stop()
        c.redis.stop()


def test_a_revocation_on_one_replica_is_honored_by_the_others(cluster: Cluster) -> None:
    client_id = cluster.register()
    _, [token], _ = asyncio.run(cluster.mint(client_id))
    pair = httpx.post(
        cluster.url(0) + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
    ).json()
    auth = {"Authorization": f"Bearer {pair['access_token']}"}
    assert httpx.get(cluster.url(2) + "/oauth/userinfo", headers=auth).status_code == 200
    httpx.post(
        cluster.url(1) + "/oauth/revoke",
        data={"token": pair["access_token"], "client_id": client_id},
    )
    for i in (0, 2):
        assert httpx.get(cluster.url(i) + "/oauth/userinfo", headers=auth).status_code == 401


def test_a_replica_killed_mid_load_loses_no_token_a_client_received(cluster: Cluster) -> None:
    client_ids = [cluster.register(i) for i in range(12)]
    _, tokens, _ = asyncio.run(cluster.mint(client_ids[0], n=150))
    victim = cluster.replicas[2]
    received: list[dict[str, str]] = []
    failures = Counter[str]()
    lock = threading.Lock()
    killed = threading.Event()

    def worker(chunk: list[str], offset: int) -> None:
        with httpx.Client(timeout=10) as http:
            for n, token in enumerate(chunk):
                replica = (offset + n) % 3
                if killed.is_set() and replica == 2:
                    replica = n % 2
                try:
                    r = http.post(
                        cluster.url(replica) + "/oauth/token",
                        data={
                            "grant_type": "refresh_token",
                            "refresh_token": token,
                            "client_id": client_ids[0],
                        },
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        failures[type(exc).__name__] += 1
                    continue
                with lock:
                    if r.status_code == 200:
                        received.append(r.json())
                    else:
                        failures[str(r.status_code)] += 1

    threads = [threading.Thread(target=worker, args=(tokens[i::8], i)) for i in range(8)]
    for t in threads:
        t.start()
    while len(received) < 40:
        time.sleep(0.01)
    victim.popen.send_signal(signal.SIGKILL)
    killed.set()
    victim.popen.wait(10)
    for t in threads:
        t.join(60)
    assert len(received) >= 75, (len(received), failures)
    # Only connection failures to the killed replica, never a 5xx elsewhere.
    assert not [k for k in failures if k.startswith("5")], failures
    survivors = cluster.replicas[:2]
    for n, pair in enumerate(received):
        base = survivors[n % 2].url
        auth = {"Authorization": f"Bearer {pair['access_token']}"}
        assert httpx.get(base + "/oauth/userinfo", headers=auth).status_code == 200
        again = httpx.post(
            base + "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": pair["refresh_token"],
                "client_id": client_ids[0],
            },
        )
        assert again.status_code == 200, again.text
    # No registration was lost: every client is still known to the survivors.
    for client_id in client_ids:
        r = httpx.post(
            survivors[1].url + "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": "nope",
                "client_id": client_id,
                "redirect_uri": REDIRECT,
                "code_verifier": "v" * 43,
            },
        )
        assert r.json()["error"] == "invalid_grant"  # known client, bad code
    # Bring the replica back for the tests after this one.
    upstream_url = str(cluster.replicas[0].extra["env"]["SIDECAR_UPSTREAM_URL"])  # type: ignore[index]
    cluster.replicas[2] = start_sidecar(upstream_url, **cluster.env)
