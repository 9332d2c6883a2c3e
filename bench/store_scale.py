"""(j) What one person holds, read beside a million unrelated keys (`make
bench --only store-scale`).

A Redis is often shared with the app (README, "Scale"): the person's
connected-apps page, `sidecar grants list --user` and the person→grants
lookup itself are timed on an empty Redis, then again, same run, after
`DEBUG POPULATE` has put a million of the app's keys beside them; each line
prints both times and the ratio, which should stay well under 2x.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sidecar.config import load_settings
from sidecar.oauth.grants import Grants
from sidecar.oauth.records import Grant
from sidecar.store import open_store
from sidecar.store.shape import migrate
from tools.oauth import Browser
from tools.processes import (
    ROOT,
    free_port,
    node_available,
    signing_key_file,
    start_better_auth,
    start_redis,
    start_sidecar,
)

UNRELATED = 1_000_000
GRANTS_HELD = 5  # the person's own
OTHERS = 2_000  # other people's grants in the same store
PAGE_ROUNDS = 60
LOOKUP_ROUNDS = 300
CLI_ROUNDS = 3


def median_ms(call: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def seed(env: dict[str, str], sub: str) -> None:
    """The person's grants and other people's, through the sidecar's own code."""
    settings = load_settings(env=env)
    store = open_store(settings.store_url)
    await store.open()
    grants = Grants(settings, store)
    await migrate(store, grants.migrations())
    for i in range(GRANTS_HELD):
        await grants.start_grant(
            Grant(os.urandom(16).hex(), f"client-{i}", sub, ("openid",), settings.public_url)
        )
    for i in range(OTHERS):
        await grants.start_grant(
            Grant(os.urandom(16).hex(), f"client-{i % 50}", f"p{i}", ("openid",), "x")
        )
    await store.close()


async def lookup_ms(env: dict[str, str], sub: str) -> float:
    settings = load_settings(env=env)
    store = open_store(settings.store_url)
    await store.open()
    grants = Grants(settings, store)
    assert len(await grants.grants_of(sub)) == GRANTS_HELD
    times = []
    for _ in range(LOOKUP_ROUNDS):
        started = time.perf_counter()
        await grants.grants_of(sub)
        times.append((time.perf_counter() - started) * 1000)
    await store.close()
    return statistics.median(times)


def measure(env: dict[str, str], sub: str, browser: Browser | None) -> dict[str, float]:
    found: dict[str, float] = {}
    if browser is not None:
        page = browser.get("/oauth/account")
        assert page.status_code == 200, page.status_code
        assert page.text.count("client-") >= GRANTS_HELD, "the page lists the person's grants"
        found["connected-apps page (GET /oauth/account)"] = median_ms(
            lambda: browser.get("/oauth/account"), PAGE_ROUNDS
        )

    def cli() -> None:
        out = subprocess.run(
            [sys.executable, "-m", "sidecar", "grants", "list", "--user", sub],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert len(out.splitlines()) == GRANTS_HELD, out

    found["sidecar grants list --user (whole command)"] = median_ms(cli, CLI_ROUNDS)
    found["person→grants lookup (Grants.grants_of)"] = asyncio.run(lookup_ms(env, sub))
    return found


def run(seconds: int = 0) -> None:
    """``seconds`` is unused: each figure is a median over fixed rounds."""
    del seconds
    print(f"\n(j) one person's grants beside {UNRELATED:,} unrelated keys in one Redis")
    redis = start_redis(None, "--enable-debug-command", "yes")
    processes = [redis]
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        port = free_port()
        browser: Browser | None = None
        if node_available():
            app = start_better_auth(TRUSTED_ORIGINS=f"http://127.0.0.1:{port}")
            processes.append(app)
            sidecar = start_sidecar(
                app.url,
                port=port,
                SIDECAR_STORE_URL=url,
                SIDECAR_SIGNING_KEY_FILE=signing_key_file(),
                SIDECAR_LOG_LEVEL="warning",
                SIDECAR_RATE_LIMIT_PER_IP="0",
            )
            processes.append(sidecar)
            env = dict(sidecar.extra["env"])  # type: ignore[call-overload]
            browser = Browser(sidecar.url).sign_up("Bench Person")
            sub = browser.get("/api/auth/get-session").json()["user"]["id"]
        else:
            print("    (the page is skipped: it needs the Node fixture)")
            env = {"SIDECAR_STORE_URL": url, "SIDECAR_DATA_DIR": f"/tmp/bench-scale-{port}"}
            sub = "bench-person"
        asyncio.run(seed(env, sub))
        empty = measure(env, sub, browser)
        started = time.perf_counter()
        subprocess.run(
            ["redis-cli", "-p", str(redis.port), "DEBUG", "POPULATE", str(UNRELATED), "app:key"],
            check=True,
            capture_output=True,
        )
        keys = subprocess.run(
            ["redis-cli", "-p", str(redis.port), "DBSIZE"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"    filled: {keys} keys in {time.perf_counter() - started:.1f} s")
        filled = measure(env, sub, browser)
        for name, before in empty.items():
            after = filled[name]
            ratio = after / before if before else float("inf")
            verdict = "ok" if ratio <= 2 else "OVER 2x"
            print(
                f"    {name:<44} empty {before:>8.2f} ms  filled {after:>8.2f} ms"
                f"  ratio {ratio:>5.2f}x  {verdict}"
            )
    finally:
        for p in reversed(processes):
            p.stop()
