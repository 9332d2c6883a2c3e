"""Token endpoint and documents under load, on the SQLite store (`make bench`).

Codes and refresh tokens are minted straight into the sidecar's own SQLite
file (same schema, same code path as /oauth/authorize would use) so the load
measures only /oauth/token; wrk sends each one exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
from pathlib import Path

import httpx

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from sidecar.oauth.grants import Grants
from sidecar.store.sqlite import SQLiteStore
from tests.support.oauth import pkce_pair
from tests.support.processes import start_sidecar

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


async def mint(settings_env: dict[str, str], client_id: str, n: int) -> tuple[list[str], list[str]]:
    settings = load_settings(env=settings_env)
    store = SQLiteStore(settings.store_url)
    await store.open()
    grants = Grants(settings, store, load_keyset(settings))
    verifier, challenge = pkce_pair()
    codes, refresh = [], []
    for _ in range(n):
        code = await grants.new_code(
            {
                "client_id": client_id,
                "redirect_uri": "http://127.0.0.1:1/cb",
                "code_challenge": challenge,
                "scope": ["openid"],
                "resource": settings.public_url,
                "nonce": None,
                "sub": "bench-user",
                "user": {"email": "b@example.com", "name": "B"},
                "auth_time": 1,
            }
        )
        codes.append(
            f"grant_type=authorization_code&client_id={client_id}&code={code}"
            f"&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&code_verifier={verifier}"
        )
        issued = await grants.issue(
            grant_id=os.urandom(8).hex(),
            client_id=client_id,
            sub="bench-user",
            scope=["openid"],
            resource=settings.public_url,
            with_refresh=True,
            user={},
            with_id_token=False,
        )
        refresh.append(
            f"grant_type=refresh_token&client_id={client_id}&refresh_token={issued.refresh_token}"
        )
    await store.close()
    return codes, refresh


def wrk_post(url: str, bodies: list[str], concurrency: int, seconds: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    (work / "bodies.txt").write_text("\n".join(bodies) + "\n")
    (work / "post.lua").write_text(LUA)
    threads = min(concurrency, 2)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(work / "post.lua"),
            url,
            "--",
            str(work / "bodies.txt"),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return summarize(out)


def wrk_get(url: str, concurrency: int, seconds: int) -> str:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(concurrency, 2)),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return summarize(out)


def summarize(out: str) -> str:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (
        f"{float(rps.group(1)) if rps else 0:>8.0f} req/s  p50 {p50.group(1) if p50 else '?':>8}"
        f"  p99 {p99.group(1) if p99 else '?':>8}  non-2xx {non2xx.group(1) if non2xx else 0}"
    )


def run(seconds: int) -> None:
    data = tempfile.mkdtemp(prefix="bench-sidecar-")
    env = {
        "SIDECAR_DATA_DIR": data,
        "SIDECAR_STORE_URL": f"sqlite:///{data}/sidecar.db",
        "SIDECAR_LOG_LEVEL": "warning",
    }
    sidecar = start_sidecar("http://127.0.0.1:9", **env)
    try:
        env["SIDECAR_PUBLIC_URL"] = sidecar.url
        client_id = httpx.post(
            sidecar.url + "/oauth/register",
            json={
                "redirect_uris": ["http://127.0.0.1:1/cb"],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        ).json()["client_id"]
        print("\n(c) OAuth on the SQLite store, one sidecar process")
        for c in (16, 64):
            codes, refresh = asyncio.run(mint(env, client_id, 1500 * seconds))
            print(f"code exchange              c={c:<3} {wrk_post(sidecar.url, codes, c, seconds)}")
            print(
                f"refresh                    c={c:<3} {wrk_post(sidecar.url, refresh, c, seconds)}"
            )
        for c in (16, 64):
            meta = sidecar.url + "/.well-known/oauth-authorization-server/oauth"
            print(f"metadata document          c={c:<3} {wrk_get(meta, c, seconds)}")
            print(
                f"JWKS document              c={c:<3} "
                f"{wrk_get(sidecar.url + '/oauth/jwks', c, seconds)}"
            )
    finally:
        sidecar.stop()
