"""A scripted browser and OAuth client for tests against a running sidecar."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:43210/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'name="(request|csrf)" value="([^"]*)"', html))


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Browser:
    """A user's browser, signed in to the app through the sidecar."""

    base: str
    client: httpx.Client = field(init=False)
    email: str = ""

    open_browsers: ClassVar[list[Browser]] = []

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base, headers={"Origin": self.base})
        Browser.open_browsers.append(self)

    @classmethod
    def close_all(cls) -> None:
        while cls.open_browsers:
            cls.open_browsers.pop().client.close()

    def sign_up(self, name: str = "Ada Lovelace") -> Browser:
        self.email = f"user-{secrets.token_hex(5)}@example.com"
        r = self.client.post(
            "/api/auth/sign-up/email",
            json={"email": self.email, "password": PASSWORD, "name": name},
        )
        r.raise_for_status()
        return self

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.get(url, **kw)

    def consent(
        self, page: httpx.Response, decision: str = "approve", **override: str
    ) -> httpx.Response:
        fields = {**form_fields(page.text), "decision": decision, **override}
        return self.client.post("/oauth/consent", data=fields)


@dataclass
class OAuthClient:
    base: str
    client_id: str = ""
    client_secret: str | None = None
    redirect_uri: str = REDIRECT
    verifier: str = ""

    def register(self, **metadata: Any) -> dict[str, Any]:
        body = {
            "redirect_uris": [self.redirect_uri],
            "client_name": "Test client",
            "grant_types": ["authorization_code", "refresh_token"],
            **metadata,
        }
        r = httpx.post(self.base + "/oauth/register", json=body)
        assert r.status_code == 201, r.text
        data = r.json()
        self.client_id = data["client_id"]
        self.client_secret = data.get("client_secret")
        return data

    def authorize_url(self, **params: str) -> str:
        self.verifier, challenge = pkce_pair()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st-" + secrets.token_hex(4),
            "scope": "openid profile email offline_access",
            **params,
        }
        query = {k: v for k, v in query.items() if v is not None}
        return "/oauth/authorize?" + str(httpx.QueryParams(query))

    def token(self, **form: str) -> httpx.Response:
        data = {"client_id": self.client_id, **form}
        if self.client_secret:
            data["client_secret"] = self.client_secret
        return httpx.post(self.base + "/oauth/token", data=data)

    def exchange(self, code: str, **extra: str) -> httpx.Response:
        return self.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=self.redirect_uri,
            code_verifier=self.verifier,
            **extra,
        )

    def refresh(self, refresh_token: str, **extra: str) -> httpx.Response:
        return self.token(grant_type="refresh_token", refresh_token=refresh_token, **extra)

    def login(self, browser: Browser, **params: str) -> dict[str, str]:
        """authorize -> consent -> approve; the redirect's query parameters."""
        page = browser.get(self.authorize_url(**params))
        if page.status_code == 200:
            page = browser.consent(page)
        assert page.status_code in (302, 303), page.text
        return query_of(page.headers["location"])


def mint_code_form(env: dict[str, str], client_id: str, redirect_uri: str) -> dict[str, str]:
    """An authorization code written straight into the store the sidecar(s)
    configured by ``env`` share, as /oauth/authorize would write it; returns
    the token request that redeems it."""
    import asyncio

    from sidecar.config import load_settings
    from sidecar.oauth.grants import Grants
    from sidecar.oauth.records import AuthorizationCode, Profile
    from sidecar.store import open_store

    settings = load_settings(env=env)
    verifier, challenge = pkce_pair()

    async def mint() -> str:
        store = open_store(settings.store_url)
        await store.open()
        try:
            return await Grants(settings, store).new_code(
                AuthorizationCode(
                    client_id=client_id,
                    redirect_uri=redirect_uri,
                    code_challenge=challenge,
                    scope=("openid",),
                    resource=settings.default_resource.url,
                    nonce=None,
                    sub="u",
                    user=Profile(),
                    auth_time=1,
                )
            )
        finally:
            await store.close()

    return {
        "grant_type": "authorization_code",
        "code": asyncio.run(mint()),
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
