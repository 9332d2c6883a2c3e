"""(i) What client authentication and the token endpoint's rate limits cost
(`make bench`, `--only client-auth`), c=16, side by side in one run. For each
load: req/s, p50/p99 and the sidecar's CPU time per request (/proc/<pid>/stat
of the process and its children, divided by the requests wrk completed).

Every comparison runs each load twice, in order then in reverse (A B B A),
and reports them together.

1. Code exchange and refresh by a public client beside the same by a
   ``private_key_jwt`` client whose keys are registered inline (``jwks`` in
   its registration): one RS256 client assertion per request, each with its
   own ``jti``, all signed before the load starts. Goal: within 1.5x.
2. The same refresh load with the rate limits at their defaults (300 refused
   per address, 600 refused per client, 60 refreshes per grant, a minute)
   beside all three at 0; every body is another grant's, so no limit is hit.
3. With ``--baseline REV``, the same refresh load against the sidecar as it
   was at REV (its per-address and per-client limits off: at old revisions
   they count every request and would refuse this load).

Codes and refresh tokens are minted straight into each sidecar's store by a
small script run with that sidecar's own checkout on the path, so the
baseline's tokens come from the baseline's code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.nginx import tree_cpu
from bench.tokens import LUA, REDIRECT, Result, parse
from tools.checkout import checkout
from tools.oauth import pkce_pair
from tools.processes import ROOT, Process, free_port, start_sidecar

ASSERTION_TYPE = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
CONCURRENCY = 16
DEFAULT_LIMITS = {
    "SIDECAR_RATE_LIMIT_PER_IP": "300",
    "SIDECAR_RATE_LIMIT_PER_CLIENT": "600",
    "SIDECAR_RATE_LIMIT_PER_GRANT": "60",
}
NO_LIMITS = dict.fromkeys(DEFAULT_LIMITS, "0")

# Run with a checkout's own sidecar package first on sys.path: argv is the
# sidecar's environment (JSON), a client_id, how many codes and how many
# refresh tokens, and a PKCE challenge; prints one JSON object. A checkout
# with typed records (sidecar.oauth.tokens) mints through Grants and Tokens;
# an older one (a --baseline) through its Grants alone.
MINT = """
import asyncio, inspect, json, os, sys
import sidecar
from sidecar.config import load_settings
from sidecar.keys import load_keyset
from sidecar.store import open_store

try:
    from sidecar.oauth.grants import Grants
    from sidecar.oauth.records import AuthorizationCode, Grant, Profile
    from sidecar.oauth.tokens import Tokens
except ImportError:
    from sidecar.oauth.grants import Grants
    Tokens = None

env, client_id = json.loads(sys.argv[1]), sys.argv[2]
n_codes, n_refresh, challenge = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
REDIRECT = "http://127.0.0.1:1/cb"


async def typed(settings, store):
    grants = Grants(settings, store)
    tokens = Tokens(grants, load_keyset(settings))
    codes, refresh = [], []
    for _ in range(n_codes):
        codes.append(await grants.new_code(AuthorizationCode(
            client_id=client_id, redirect_uri=REDIRECT, code_challenge=challenge,
            scope=("openid",), resource=settings.public_url, nonce=None, sub="bench-user",
            user=Profile(email="b@example.com", name="B"), auth_time=1,
        )))
    for _ in range(n_refresh):
        grant_id = os.urandom(8).hex()
        await grants.start_grant(Grant(
            grant_id, client_id, "bench-user", ("openid",), settings.public_url, auth_time=1
        ))
        issued = await tokens.issue(
            grant_id=grant_id, client_id=client_id, sub="bench-user", scope=["openid"],
            resource=settings.public_url, with_refresh=True, user=Profile(),
            with_id_token=False,
        )
        refresh.append(issued.refresh_token)
    return codes, refresh


async def untyped(settings, store):
    grants = Grants(settings, store, load_keyset(settings))
    codes = []
    for _ in range(n_codes):
        codes.append(await grants.new_code({
            "client_id": client_id, "redirect_uri": REDIRECT,
            "code_challenge": challenge, "scope": ["openid"],
            "resource": settings.public_url, "nonce": None, "sub": "bench-user",
            "user": {"email": "b@example.com", "name": "B"}, "auth_time": 1,
        }))
    accepted = inspect.signature(grants.issue).parameters
    refresh = []
    for _ in range(n_refresh):
        grant_id = os.urandom(8).hex()
        if hasattr(grants, "start_grant"):
            await grants.start_grant(grant_id, {
                "client_id": client_id, "sub": "bench-user", "scope": ["openid"],
                "resource": settings.public_url, "auth_time": 1,
            })
        wanted = dict(
            grant_id=grant_id, client_id=client_id, sub="bench-user", scope=["openid"],
            resource=settings.public_url, with_refresh=True, user={}, with_id_token=False,
        )
        issued = await grants.issue(**{k: v for k, v in wanted.items() if k in accepted})
        refresh.append(issued.refresh_token)
    return codes, refresh


async def main():
    settings = load_settings(env=env)
    store = open_store(settings.store_url)
    await store.open()
    codes, refresh = await (typed if Tokens is not None else untyped)(settings, store)
    await store.close()
    print(json.dumps({"module": sidecar.__file__, "codes": codes, "refresh": refresh}))

asyncio.run(main())
"""


@dataclass
class Measured:
    result: Result
    requests: int
    cpu_s: float

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0

    def __str__(self) -> str:
        errors = f"  non-2xx {self.result.non2xx}" if self.result.non2xx else ""
        return (
            f"{self.result.rps:>6.0f} req/s  p50 {self.result.p50_ms:>6.2f} ms  "
            f"p99 {self.result.p99_ms:>7.2f} ms  CPU {self.cpu_us:>6.0f} µs/request{errors}"
        )


def combine(runs: list[Measured]) -> Measured:
    """Runs of equal length: req/s, p50 and p99 averaged, CPU time and
    requests added up (so CPU per request is over all of them)."""
    n = len(runs)
    return Measured(
        Result(
            sum(r.result.rps for r in runs) / n,
            sum(r.result.p50_ms for r in runs) / n,
            sum(r.result.p99_ms for r in runs) / n,
            sum(r.result.non2xx for r in runs),
        ),
        sum(r.requests for r in runs),
        sum(r.cpu_s for r in runs),
    )


def side_by_side(*loads: Callable[[], Measured]) -> list[Measured]:
    """Each load twice, in order then in reverse (A B B A), so a machine
    getting busier or quieter during the run weighs on all of them alike."""
    runs: list[list[Measured]] = [[] for _ in loads]
    order = [*range(len(loads)), *reversed(range(len(loads)))]
    for i in order:
        runs[i].append(loads[i]())
    return [combine(r) for r in runs]


@dataclass
class Sidecar:
    process: Process
    tree: Path  # the checkout it runs from

    @property
    def url(self) -> str:
        return self.process.url


class ClientKey:
    """An RSA key pair: the JWKS registered inline, the assertions signed."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwks = {"keys": [{**public, "kid": "bench-1", "use": "sig", "alg": "RS256"}]}

    def assertions(self, client_id: str, audience: str, n: int) -> list[str]:
        now = int(time.time())
        return [
            jwt.encode(
                {
                    "iss": client_id,
                    "sub": client_id,
                    "aud": audience,
                    "iat": now,
                    "exp": now + 300,
                    "jti": uuid.uuid4().hex,
                },
                self.private,
                algorithm="RS256",
                headers={"kid": "bench-1"},
            )
            for _ in range(n)
        ]


def signing_key(directory: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = Path(directory) / "signing-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def start(tree: Path, limits: dict[str, str]) -> Sidecar:
    data = tempfile.mkdtemp(prefix="bench-client-auth-")
    process = start_sidecar(
        "http://127.0.0.1:9",
        port=free_port(),
        cwd=None if tree == ROOT else tree,
        SIDECAR_LOG_LEVEL="warning",
        SIDECAR_DATA_DIR=data,
        SIDECAR_STORE_URL=f"sqlite:///{data}/sidecar.db",
        SIDECAR_SIGNING_KEY_FILE=signing_key(data),
        **limits,
    )
    return Sidecar(process, tree)


def register(sidecar: Sidecar, extra: dict[str, Any]) -> str:
    r = httpx.post(
        sidecar.url + "/oauth/register",
        json={
            "redirect_uris": ["http://127.0.0.1:1/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
            **extra,
        },
    )
    r.raise_for_status()
    return str(r.json()["client_id"])


def mint(sidecar: Sidecar, client_id: str, codes: int, refresh: int) -> tuple[list[str], str]:
    """Codes (with the PKCE verifier they need) or refresh tokens, minted by
    the sidecar's own checkout into its store."""
    verifier, challenge = pkce_pair()
    env = sidecar.process.extra["env"]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MINT,
            json.dumps(env),
            client_id,
            str(codes),
            str(refresh),
            challenge,
        ],
        cwd=sidecar.tree,
        env={**os.environ, "PYTHONPATH": str(sidecar.tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"minting in {sidecar.tree} failed:\n{done.stderr[-3000:]}")
    minted = json.loads(done.stdout)
    module = Path(minted["module"]).resolve()
    assert module.is_relative_to(sidecar.tree.resolve()), (module, sidecar.tree)
    return minted["codes"] or minted["refresh"], verifier


class Loads:
    """wrk against /oauth/token, each body sent once; enough bodies for the
    fastest load seen so far, half as many again."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.most = 0

    def enough(self) -> int:
        if not self.most:
            return 2000 * self.seconds
        return int(self.most * 1.5) + 500

    def run(self, sidecar: Sidecar, bodies: list[str]) -> Measured:
        threads = 2
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            (Path(work) / "bodies.txt").write_text("\n".join(bodies) + "\n")
            (Path(work) / "post.lua").write_text(LUA)
            argv = [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(CONCURRENCY),
                "-d",
                f"{self.seconds}s",
                "--latency",
                "-s",
                f"{work}/post.lua",
                sidecar.url + "/oauth/token",
                "--",
                f"{work}/bodies.txt",
                str(threads),
            ]
            pid = sidecar.process.popen.pid
            before = tree_cpu(pid)
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            used = tree_cpu(pid) - before
        done = re.search(r"(\d+) requests in", out)
        requests = int(done.group(1)) if done else 0
        self.most = max(self.most, requests)
        if requests > len(bodies):
            print(f"  (only {len(bodies)} bodies for {requests} requests: some sent twice)")
        return Measured(parse(out), requests, used)

    def codes(self, sidecar: Sidecar, client: str, auth: str = "") -> Measured:
        codes, verifier = mint(sidecar, client, self.enough(), 0)
        bodies = [
            f"grant_type=authorization_code&client_id={client}&code={code}"
            f"&redirect_uri={REDIRECT}&code_verifier={verifier}"
            for code in codes
        ]
        return self.run(sidecar, with_assertions(bodies, auth, client, sidecar))

    def refresh(self, sidecar: Sidecar, client: str, auth: str = "") -> Measured:
        tokens, _ = mint(sidecar, client, 0, self.enough())
        bodies = [
            f"grant_type=refresh_token&client_id={client}&refresh_token={token}" for token in tokens
        ]
        return self.run(sidecar, with_assertions(bodies, auth, client, sidecar))


KEYS: dict[str, ClientKey] = {}


def with_assertions(bodies: list[str], auth: str, client: str, sidecar: Sidecar) -> list[str]:
    """``auth``: the name of a ClientKey in KEYS, or "" for a public client.
    Signed now, just before the load: each assertion lives 300 s."""
    if not auth:
        return bodies
    audience = sidecar.url + "/oauth/token"
    signed = KEYS[auth].assertions(client, audience, len(bodies))
    return [
        f"{body}&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}"
        for body, assertion in zip(bodies, signed, strict=True)
    ]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def line(label: str, measured: Measured) -> None:
    print(f"  {label:<40} {measured}", flush=True)


def public_client(sidecar: Sidecar) -> str:
    return register(sidecar, {"token_endpoint_auth_method": "none"})


def run(seconds: int, baseline: str | None = None) -> None:
    print(f"\n(i) client authentication and token rate limits, /oauth/token, c={CONCURRENCY}")
    loads = Loads(seconds)
    sidecars: list[Sidecar] = []

    def fresh(tree: Path, limits: dict[str, str]) -> Sidecar:
        # Every section its own sidecars, so the ones compared hold stores
        # that have seen the same loads.
        sidecar = start(tree, limits)
        sidecars.append(sidecar)
        return sidecar

    def stop_all() -> None:
        while sidecars:
            sidecars.pop().process.stop()

    with checkout(baseline) as tree:
        try:
            print("  1. public client vs private_key_jwt (inline jwks, RS256), default limits")
            limited = fresh(ROOT, DEFAULT_LIMITS)
            public = public_client(limited)
            KEYS["inline"] = ClientKey()
            signed = register(
                limited,
                {
                    "token_endpoint_auth_method": "private_key_jwt",
                    "token_endpoint_auth_signing_alg": "RS256",
                    "jwks": KEYS["inline"].jwks,
                },
            )
            figures: dict[str, tuple[Measured, Measured]] = {}
            for grant, how in (("code exchange", loads.codes), ("refresh", loads.refresh)):
                p, a = side_by_side(
                    lambda how=how: how(limited, public),
                    lambda how=how: how(limited, signed, "inline"),
                )
                line(f"{grant}, public client", p)
                line(f"{grant}, private_key_jwt", a)
                figures[grant] = (p, a)
            for grant, (p, a) in figures.items():
                print(
                    f"  -> {grant}: assertion/public CPU per request "
                    f"{ratio(a.cpu_us, p.cpu_us)}, req/s {ratio(a.result.rps, p.result.rps)}"
                    f" (goal: CPU within 1.5x)",
                    flush=True,
                )
            stop_all()

            print("  2. rate limits: defaults (300/600/60) vs all 0, refresh, public client")
            on_sidecar, off_sidecar = fresh(ROOT, DEFAULT_LIMITS), fresh(ROOT, NO_LIMITS)
            on_client, off_client = public_client(on_sidecar), public_client(off_sidecar)
            on, off = side_by_side(
                lambda: loads.refresh(on_sidecar, on_client),
                lambda: loads.refresh(off_sidecar, off_client),
            )
            line("refresh, limits at defaults", on)
            line("refresh, limits 0", off)
            print(
                f"  -> the limiter costs {on.cpu_us - off.cpu_us:+.0f} µs CPU per refresh "
                f"({ratio(on.cpu_us, off.cpu_us)}); req/s {ratio(on.result.rps, off.result.rps)}",
                flush=True,
            )
            stop_all()

            if tree is not None and baseline:
                print(f"  3. refresh against baseline {baseline[:10]}, public client")
                # The baseline's per-address and per-client limits count every
                # token request, and would refuse this load: off there.
                trio = [fresh(tree, NO_LIMITS), fresh(ROOT, DEFAULT_LIMITS), fresh(ROOT, NO_LIMITS)]
                clients = [public_client(s) for s in trio]
                old, now_on, now_off = side_by_side(
                    *(
                        lambda s=s, c=c: loads.refresh(s, c)
                        for s, c in zip(trio, clients, strict=True)
                    )
                )
                line(f"refresh, baseline {baseline[:10]} (limits 0)", old)
                line("refresh, now, limits at defaults", now_on)
                line("refresh, now, limits 0", now_off)
                print(
                    f"  -> now/baseline refreshes per second: defaults "
                    f"{ratio(now_on.result.rps, old.result.rps)}, limits 0 "
                    f"{ratio(now_off.result.rps, old.result.rps)}; CPU per refresh "
                    f"{ratio(now_on.cpu_us, old.cpu_us)} / {ratio(now_off.cpu_us, old.cpu_us)}",
                    flush=True,
                )
        finally:
            stop_all()
