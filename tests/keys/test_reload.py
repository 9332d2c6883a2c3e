"""`sidecar keys rotate` takes effect in a running sidecar without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import jwt

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from sidecar.oauth.grants import Grants
from sidecar.oauth.records import Profile
from sidecar.oauth.tokens import Tokens
from sidecar.store import open_store
from tools.processes import Process, running, start_sidecar


async def mint_refresh(env: dict[str, str], client_id: str) -> str:
    settings = load_settings(env=env)
    store = open_store(settings.store_url)
    await store.open()
    tokens = Tokens(Grants(settings, store), load_keyset(settings))
    issued = await tokens.issue(
        grant_id="g-reload",
        client_id=client_id,
        sub="u",
        scope=["openid"],
        resource=settings.default_resource.url,
        with_refresh=True,
        user=Profile(),
        with_id_token=False,
    )
    await store.close()
    assert issued.refresh_token
    return issued.refresh_token


def test_a_rotated_key_signs_in_the_running_sidecar_and_the_old_stays_published(
    upstream: Process,
) -> None:
    with running(start_sidecar(upstream.url)) as sidecar:
        env = {
            k: v
            for k, v in sidecar.extra["env"].items()  # type: ignore[union-attr]
            if k in ("SIDECAR_DATA_DIR", "SIDECAR_STORE_URL")
        }
        env["SIDECAR_PUBLIC_URL"] = sidecar.url
        old_kids = [k["kid"] for k in httpx.get(sidecar.url + "/oauth/jwks").json()["keys"]]
        assert len(old_kids) == 1

        rotated = subprocess.run(
            [sys.executable, "-m", "sidecar", "keys", "rotate"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert rotated.returncode == 0, rotated.stderr
        new_kid = rotated.stdout.split("new signing key ", 1)[1].split(":", 1)[0]

        deadline = time.monotonic() + 10
        kids: list[str] = old_kids
        while time.monotonic() < deadline and len(kids) < 2:
            kids = [k["kid"] for k in httpx.get(sidecar.url + "/oauth/jwks").json()["keys"]]
            time.sleep(0.2)
        assert set(kids) == {old_kids[0], new_kid}

        client_id = httpx.post(
            sidecar.url + "/oauth/register",
            json={
                "redirect_uris": ["http://127.0.0.1:1/cb"],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        ).json()["client_id"]
        token = asyncio.run(mint_refresh(env, client_id))
        r = httpx.post(
            sidecar.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
        )
        assert r.status_code == 200, r.text
        assert jwt.get_unverified_header(r.json()["access_token"])["kid"] == new_kid
        assert '"signing keys reloaded"' in sidecar.log_text()
