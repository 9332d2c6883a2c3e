"""`make fuzz`: at least 100,000 generated requests against a running sidecar in
front of a local upstream. Prints counts by endpoint and status; fails on any
5xx, any traceback or error line in the sidecar's log, or a sidecar whose
memory keeps growing.

    make fuzz                     # 100,000 requests, seed 1
    make fuzz ARGS="--requests 200000 --seed 7"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.processes import Process, start_sidecar, start_upstream  # noqa: E402

OWNED = [
    "/oauth/token",
    "/oauth/register",
    "/oauth/revoke",
    "/oauth/introspect",
    "/oauth/userinfo",
    "/oauth/authorize",
    "/oauth/authorize/continue",
    "/oauth/consent",
    "/oauth/account",
    "/oauth/account/revoke",
    "/oauth/jwks",
    "/.well-known/oauth-authorization-server/oauth",
    "/.well-known/openid-configuration/oauth",
    "/oauth/.well-known/openid-configuration",
    "/.well-known/oauth-protected-resource/api/mcp",
    "/oauth/healthz",
    "/oauth/readyz",
    "/api/mcp",
    "/api/mcp/x",
    "/oauth/nope",
]
PROXIED = ["/echo", "/small", "/cookies", "/status?code=404", "/echo/a%2Fb", "/hop"]
PARAMS = [
    "client_id",
    "grant_type",
    "code",
    "redirect_uri",
    "scope",
    "state",
    "response_type",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "prompt",
    "request",
    "csrf",
    "decision",
    "client_secret",
    "nonce",
]
VALUES = [
    "",
    "authorization_code",
    "refresh_token",
    "code",
    "S256",
    "plain",
    "none",
    "consent",
    "login",
    "openid profile email",
    "http://127.0.0.1:1/cb",
    "javascript:alert(1)",
    "https://evil.test/",
    "<script>alert(1)</script>",
    "x" * 5000,
    "\u0000",
    "é✓",
    "%00",
    "..;/",
    "' OR 1=1 --",
    "a.b",
    "null",
]
HEADER_NAMES = [
    "Authorization",
    "Cookie",
    "Content-Type",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "Better-Auth-Cookie",
    "Origin",
    "X-Sidecar-User-Id",
    "MCP-Protocol-Version",
    "Accept",
    "Expect",
]
HEADER_VALUES = [
    "Bearer x.y.z",
    "Bearer ",
    "Basic Zm9vOmJhcg==",
    "Basic !!!",
    "Negotiate x",
    "application/x-www-form-urlencoded",
    "application/json",
    "text/plain",
    "better-auth.convex_jwt=a.b.c",
    "better-auth.session_token=abc",
    "1.2.3.4",
    "evil.test",
    "https",
    "2025-06-18",
    "x" * 3000,
    "é",
    "100-continue",
]
METHODS = ["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def value(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    return rng.choice(VALUES)


def form(rng: random.Random) -> str:
    items = [(rng.choice(PARAMS), value(rng)) for _ in range(rng.randrange(0, 8))]
    if items and rng.random() < 0.2:
        items.append(items[0])  # a repeated parameter
    return "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in items)


def body(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.45:
        return form(rng).encode()
    if choice < 0.7:
        doc = {
            rng.choice(
                [
                    "redirect_uris",
                    "client_name",
                    "token_endpoint_auth_method",
                    "grant_types",
                    "scope",
                    "client_uri",
                ]
            ): rng.choice([value(rng), [value(rng)], 5, None, {"a": 1}])
            for _ in range(rng.randrange(0, 5))
        }
        if rng.random() < 0.5:
            doc["redirect_uris"] = [
                rng.choice(
                    ["http://127.0.0.1:9/cb", "https://c.test/cb", "javascript:x", value(rng)]
                )
            ]
        return json.dumps(doc).encode()
    if choice < 0.85:
        return rng.randbytes(rng.randrange(0, 600))
    return b""


CLIENTS: list[str] = []  # registered before the campaign starts
RESOURCE = ["http://127.0.0.1/api/mcp"]  # the sidecar's own, set once it runs
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # a well-formed S256 challenge


def nearly_valid_authorize(rng: random.Random) -> str:
    """A valid authorization request, or one with a single field changed, so
    the campaign also reaches what follows client and redirect validation:
    the other checks, the session bridge, pending requests, login redirects."""
    params = {
        "response_type": "code",
        "client_id": rng.choice(CLIENTS),
        "redirect_uri": "http://127.0.0.1:1/cb",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "state": "s",
        "scope": "openid",
        "resource": RESOURCE[0],
    }
    roll = rng.random()
    if roll < 0.4:
        params[rng.choice([*params, "prompt", "nonce"])] = value(rng)
    elif roll < 0.55:
        params.pop(rng.choice(list(params)))
    elif roll < 0.7:
        params["prompt"] = rng.choice(["none", "login", "consent", "none login", "bogus"])
    return "/oauth/authorize?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


def request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes, str]:
    if CLIENTS and rng.random() < 0.1:
        return "GET", nearly_valid_authorize(rng), {}, b"", "/oauth/authorize (nearly valid)"
    endpoint = rng.choice(OWNED) if rng.random() < 0.85 else rng.choice(PROXIED)
    path = endpoint
    if rng.random() < 0.6 and "?" not in path:
        path += "?" + form(rng)
    headers = {}
    for _ in range(rng.randrange(0, 5)):
        headers[rng.choice(HEADER_NAMES)] = rng.choice(HEADER_VALUES)
    if headers.get("Expect") == "100-continue":
        del headers["Expect"]  # aiohttp would wait for the interim answer itself
    method = rng.choice(METHODS)
    data = body(rng) if method in ("POST", "PUT", "PATCH") else b""
    return method, path, headers, data, endpoint


async def campaign(
    base: str, total: int, seed: int, concurrency: int, sidecar: Process
) -> tuple[Counter[tuple[str, int]], list[tuple[int, int]]]:
    counts: Counter[tuple[str, int]] = Counter()
    rss: list[tuple[int, int]] = []
    sent = 0
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base,
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Content-Type",),
    ) as http:

        async def worker() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                if sent % (total // 10) == 0:
                    rss.append((sent, sidecar.rss_kib()))
                method, path, headers, data, endpoint = request(rng)
                try:
                    async with http.request(
                        method, path, headers=headers, data=data or None, allow_redirects=False
                    ) as response:
                        await response.read()
                        counts[(endpoint, response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    counts[(endpoint, -1)] += 1
                    print(f"client error on {method} {path[:80]}: {exc!r}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, rss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    upstream = start_upstream()
    sidecar = start_sidecar(
        upstream.url,
        SIDECAR_RESOURCES="/api/mcp",
        SIDECAR_ACCESS_LOG="false",
        SIDECAR_REGISTRATION_RATE_LIMIT="0",
    )
    # A few real clients, so generated requests also reach past client checks.
    import httpx

    for _ in range(3):
        r = httpx.post(
            sidecar.url + "/oauth/register",
            json={
                "redirect_uris": ["http://127.0.0.1:1/cb"],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        VALUES.append(r.json()["client_id"])
        CLIENTS.append(r.json()["client_id"])
    RESOURCE[0] = sidecar.url + "/api/mcp"
    started = time.monotonic()
    try:
        counts, rss = asyncio.run(
            campaign(sidecar.url, args.requests, args.seed, args.concurrency, sidecar)
        )
    finally:
        sidecar.stop()
        upstream.stop()
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"{total} requests in {elapsed:.0f} s ({total / elapsed:.0f} req/s), seed {args.seed}")
    by_endpoint: dict[str, Counter[int]] = {}
    for (endpoint, status), n in counts.items():
        by_endpoint.setdefault(endpoint, Counter())[status] += n
    for endpoint in sorted(by_endpoint):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(by_endpoint[endpoint].items()))
        print(f"  {endpoint:<48} {statuses}")
    failures = []
    server_errors = sum(n for (_, status), n in counts.items() if status >= 500 or status < 0)
    if server_errors:
        failures.append(f"{server_errors} answers were 5xx or no answer")
    log = sidecar.log_text()
    bad_lines = [
        line for line in log.splitlines() if "Traceback" in line or '"level": "error"' in line
    ]
    if bad_lines:
        failures.append(f"{len(bad_lines)} traceback/error lines in the log, e.g. {bad_lines[0]}")
    print("sidecar RSS (KiB) by requests sent: " + ", ".join(f"{n}: {kib}" for n, kib in rss))
    if len(rss) >= 3:
        growth = (rss[-1][1] - rss[1][1]) / 1024
        print(f"memory growth after warm-up: {growth:.1f} MiB")
        if growth > 40:
            failures.append(f"sidecar memory grew by {growth:.1f} MiB after warm-up")
    if total < args.requests:
        failures.append(f"only {total} requests were answered")
    for failure in failures:
        print("FAIL: " + failure)
    print("fuzz: " + ("FAILED" if failures else "passed, zero 5xx"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
