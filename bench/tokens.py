"""Token endpoint and documents under load (`make bench`).

(c) one sidecar process on SQLite: code exchange, refresh, metadata, JWKS.
(d) the same token load on two replicas sharing one Redis, beside the
    one-process SQLite run, same load and same run, with the ratio.

Codes and refresh tokens are minted straight into the sidecar's own store
(same code path /oauth/authorize and /oauth/token use) so the load measures
only /oauth/token; wrk sends each one exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from sidecar.oauth.grants import Grants
from sidecar.oauth.records import AuthorizationCode, Profile
from sidecar.oauth.tokens import Tokens
from sidecar.store import open_store
from tools.oauth import pkce_pair
from tools.processes import Process, free_port, start_redis, start_sidecar

LUA = """
local bodies = {}
local counter = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  local stride = tonumber(args[2])
  for line in io.lines(args[1]) do table.insert(bodies, line) end
  counter = id - 1
  step = stride
end
function request()
  counter = counter + step
  local body = bodies[((counter - 1) % #bodies) + 1]
  return wrk.format("POST", "/oauth/token",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
"""
REDIRECT = "http%3A%2F%2F127.0.0.1%3A1%2Fcb"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int

    def __str__(self) -> str:
        return (
            f"{self.rps:>8.0f} req/s  p50 {self.p50_ms:>7.2f} ms  p99 {self.p99_ms:>7.2f} ms"
            f"  non-2xx {self.non2xx}"
        )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(out: str) -> Result:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(
        float(rps.group(1)) if rps else 0.0,
        _ms(p50.group(1)) if p50 else 0.0,
        _ms(p99.group(1)) if p99 else 0.0,
        int(non2xx.group(1)) if non2xx else 0,
    )


def combine(results: list[Result]) -> Result:
    """Several wrk runs at once, one per replica: throughput adds up; the
    latency figures are the worst of them."""
    return Result(
        sum(r.rps for r in results),
        max(r.p50_ms for r in results),
        max(r.p99_ms for r in results),
        sum(r.non2xx for r in results),
    )


async def mint(env: dict[str, str], client_id: str, n: int) -> tuple[list[str], list[str]]:
    settings = load_settings(env=env)
    store = open_store(settings.store_url)
    await store.open()
    grants = Grants(settings, store)
    tokens = Tokens(grants, load_keyset(settings))
    verifier, challenge = pkce_pair()
    codes, refresh = [], []
    for _ in range(n):
        code = await grants.new_code(
            AuthorizationCode(
                client_id=client_id,
                redirect_uri="http://127.0.0.1:1/cb",
                code_challenge=challenge,
                scope=("openid",),
                resource=settings.public_url,
                nonce=None,
                sub="bench-user",
                user=Profile(email="b@example.com", name="B"),
                auth_time=1,
            )
        )
        codes.append(
            f"grant_type=authorization_code&client_id={client_id}&code={code}"
            f"&redirect_uri={REDIRECT}&code_verifier={verifier}"
        )
        issued = await tokens.issue(
            grant_id=os.urandom(8).hex(),
            client_id=client_id,
            sub="bench-user",
            scope=["openid"],
            resource=settings.public_url,
            with_refresh=True,
            user=Profile(),
            with_id_token=False,
        )
        refresh.append(
            f"grant_type=refresh_token&client_id={client_id}&refresh_token={issued.refresh_token}"
        )
    await store.close()
    return codes, refresh


def wrk(url: str, concurrency: int, seconds: int, bodies: list[str] | None = None) -> Result:
    threads = min(concurrency, 2)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency"]
    if bodies is None:
        argv.append(url)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-"))
        (work / "bodies.txt").write_text("\n".join(bodies) + "\n")
        (work / "post.lua").write_text(LUA)
        argv += ["-s", str(work / "post.lua"), url, "--", str(work / "bodies.txt"), str(threads)]
    return parse(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def wrk_split(urls: list[str], bodies: list[str], concurrency: int, seconds: int) -> Result:
    """The same total concurrency spread over the replicas, all at once."""
    share = max(1, concurrency // len(urls))
    results: list[Result] = []
    lock = threading.Lock()

    def one(i: int, url: str) -> None:
        result = wrk(url, share, seconds, bodies[i :: len(urls)])
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return combine(results)


def register(url: str) -> str:
    r = httpx.post(
        url + "/oauth/register",
        json={
            "redirect_uris": ["http://127.0.0.1:1/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
        },
    )
    r.raise_for_status()
    return str(r.json()["client_id"])


def shared_key(directory: str) -> str:
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


def run(seconds: int) -> None:
    data = tempfile.mkdtemp(prefix="bench-sidecar-")
    public = f"http://127.0.0.1:{free_port()}"
    common = {
        "SIDECAR_LOG_LEVEL": "warning",
        "SIDECAR_PUBLIC_URL": public,
        "SIDECAR_SIGNING_KEY_FILE": shared_key(data),
        "SIDECAR_DATA_DIR": data,
    }
    sqlite_env = {**common, "SIDECAR_STORE_URL": f"sqlite:///{data}/sidecar.db"}
    processes: list[Process] = []
    try:
        one = start_sidecar("http://127.0.0.1:9", **sqlite_env)
        processes.append(one)
        redis = start_redis()
        processes.append(redis)
        redis_env = {**common, "SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis.port}/0"}
        pair = [start_sidecar("http://127.0.0.1:9", **redis_env) for _ in range(2)]
        processes.extend(pair)
        sqlite_client = register(one.url)
        redis_client = register(pair[0].url)

        print("\n(c) OAuth on the SQLite store, one sidecar process")
        print("(d) two replicas sharing one Redis, the same load beside it")
        for c in (16, 64):
            n = 2000 * seconds  # more than wrk can send, so none is sent twice
            codes, refresh = asyncio.run(mint(sqlite_env, sqlite_client, n))
            r_codes, r_refresh = asyncio.run(mint(redis_env, redis_client, n))
            for label, bodies, r_bodies in (
                ("code exchange", codes, r_codes),
                ("refresh", refresh, r_refresh),
            ):
                single = wrk(one.url + "/oauth/token", c, seconds, bodies)
                double = wrk_split([p.url + "/oauth/token" for p in pair], r_bodies, c, seconds)
                ratio = double.rps / single.rps if single.rps else 0.0
                print(
                    f"{label:<14} c={c:<3} 1x SQLite {single} | 2x Redis {double} | "
                    f"ratio {ratio:.2f}",
                    flush=True,
                )
        for c in (16, 64):
            meta = one.url + "/.well-known/oauth-authorization-server/oauth"
            print(f"metadata document   c={c:<3} {wrk(meta, c, seconds)}")
            print(f"JWKS document       c={c:<3} {wrk(one.url + '/oauth/jwks', c, seconds)}")
    finally:
        for p in reversed(processes):
            p.stop()
