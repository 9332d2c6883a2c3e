"""(e) An authorization with remembered consent, from a live session
(`make bench`): the person's browser holds the convex_jwt cookie, so the
sidecar knows them without asking the app, then confirms the session with the
app at most once per ``session_recheck_seconds``. Measured side by side in one
run: the default (60 s), ``session_recheck_seconds = 0`` (the app asked every
time), and optionally a baseline checkout (``--baseline REV``: the same load
against the sidecar as it was at REV). Reported: req/s, p50/p99 and the
sidecar's CPU time per request from /proc/<pid>/stat."""

from __future__ import annotations

from pathlib import Path

import httpx

from bench.nginx import measure
from bench.tokens import Result
from tools import fixtures
from tools.checkout import checkout
from tools.oauth import OAuthClient, form_fields
from tools.processes import Process, free_port, start_better_auth, start_sidecar


def signed_in(base: str) -> tuple[str, OAuthClient, str]:
    """A person signed up through the sidecar who approved one client once:
    their cookie header and the authorization URL that is now remembered."""
    browser = httpx.Client(base_url=base, headers={"Origin": base})
    browser.post(
        "/api/auth/sign-up/email",
        json={"email": "consent@example.com", "password": "bench password 123", "name": "B"},
    ).raise_for_status()
    browser.get("/api/auth/get-session").raise_for_status()  # the convex_jwt cookie
    client = OAuthClient(base)
    client.register()
    url = client.authorize_url(scope="openid", state="bench")
    page = browser.get(url)
    fields = form_fields(page.text)
    done = browser.post("/oauth/consent", data={**fields, "decision": "approve"})
    assert done.status_code == 303, done.text
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
    assert "convex_jwt" in cookie
    again = browser.get(url)
    assert again.status_code == 302, again.text  # remembered: straight back with a code
    browser.close()
    return cookie, client, url


def load(base: str, url: str, cookie: str, sidecar: Process, seconds: int) -> tuple[Result, float]:
    measured = measure(base + url, sidecar, 16, seconds, ("-H", f"Cookie: {cookie}"))
    return measured.result, measured.cpu_us


def run(seconds: int, baseline: str | None = None) -> None:
    print("\n(e) authorize with remembered consent, signed in (convex_jwt cookie), c=16")
    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
    }
    checkouts: list[tuple[str, Path | None, dict[str, str]]] = [
        ("recheck every 60 s (default)", None, {}),
        ("recheck every time (0)", None, {"SIDECAR_SESSION_RECHECK_SECONDS": "0"}),
    ]
    with checkout(baseline) as tree:
        if tree is not None and baseline:
            checkouts.append((f"baseline {baseline[:10]}", tree, {}))
        for label, cwd, extra in checkouts:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            app = start_better_auth(TRUSTED_ORIGINS=base, CONVEX_SITE_URL=base, **shared)
            try:
                sidecar = start_sidecar(
                    app.url,
                    port=port,
                    cwd=cwd,
                    SIDECAR_LOG_LEVEL="warning",
                    CONVEX_SITE_URL=base,
                    **shared,
                    **extra,
                )
                try:
                    cookie, _client, url = signed_in(base)
                    result, cpu_us = load(base, url, cookie, sidecar, seconds)
                    print(f"  {label:<32} {result}  CPU {cpu_us:>6.0f} µs/request", flush=True)
                finally:
                    sidecar.stop()
            finally:
                app.stop()
