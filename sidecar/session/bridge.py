"""Who is the browser's user? The upstream's Better Auth decides, never us.

1. ``convex()`` keeps the session JWT in the ``better-auth.convex_jwt`` cookie
   (``__Secure-`` on https); when it verifies against the static JWKS (issuer,
   ``aud = convex``, expiry) that is the user, with no upstream call. The
   upstream answers /convex/token at only a few hundred requests per second.
2. Otherwise the browser's ``Cookie`` (and the crossDomain plugin's
   ``Better-Auth-Cookie``) go to ``<auth base>/convex/token``; the returned JWT
   is verified the same way, and any ``Set-Cookie`` goes back to the browser.
3. Without a static JWKS, ``<auth base>/get-session`` answers instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jwt
import structlog

from sidecar.config import Settings
from sidecar.keys import KeySet
from sidecar.proxy.headers import drop_cookie_domain, upstream_cookie_domain
from sidecar.proxy.upstream import UpstreamClient, UpstreamError
from sidecar.session.refusals import Refusals, shown

log = structlog.get_logger("sidecar.session")

SESSION_AUDIENCE = "convex"
CLOCK_SKEW = 5  # seconds, as Convex allows
# The user id becomes the gateway's X-Sidecar-User-Id header and a token's
# `sub`: visible ASCII only (Better Auth's ids are), so no control character
# or non-ASCII octet from the app can reach a header line.
USER_ID = re.compile(r"[\x21-\x7e]{1,256}")


class SessionUnavailable(UpstreamError):
    """The app could not say who the browser's person is: unreachable, too
    slow, or an answer that is neither a session nor a refusal.

    A subclass of the proxy's UpstreamError for now, so that callers which
    still catch that keep working; they are to catch this instead."""


def user_id_is_safe(sub: str) -> bool:
    return USER_ID.fullmatch(sub) is not None


@dataclass(frozen=True)
class User:
    sub: str
    email: str | None = None
    name: str | None = None
    session_id: str | None = None  # Better Auth's session row, when known


@dataclass
class SessionLookup:
    user: User | None
    set_cookies: list[bytes] = field(default_factory=list)
    source: str = "none"  # cookie, convex-token, get-session or none


def parse_cookie_header(value: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = val.strip().strip('"')
    return cookies


class SessionBridge:
    def __init__(self, settings: Settings, upstream: UpstreamClient, keyset: KeySet) -> None:
        self.settings = settings
        self.upstream = upstream
        self.keys = keyset.session_keys
        self.issuer = (settings.session_issuer or "").rstrip("/")
        prefix = settings.session_cookie_prefix
        self.jwt_cookie_names = (f"__Secure-{prefix}.convex_jwt", f"{prefix}.convex_jwt")
        base = settings.auth_base_path.rstrip("/")
        self.token_path = f"{base}/convex/token"
        self.session_path = f"{base}/get-session"
        # Cookies the app scopes to its own host (Better Auth on Convex's
        # .convex.site) are made host-only for the public origin, as the proxy does.
        self.cookie_domain = upstream_cookie_domain(settings.upstream_url, settings.public_url)
        self.refusals = Refusals()

    def verify_session_jwt(self, token: str, *, fresh: bool = False) -> User | None:
        """A Convex session JWT from this deployment, or None. ``fresh``: the
        app minted it just now (its /convex/token answer), not a cookie."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid", "")
            if kid not in self.keys:
                self.refusals.refused("key", f"unknown key id {shown(kid)}")
                return None
            alg, key = self.keys[kid]
            if header.get("alg") != alg:
                self.refusals.refused("signature", f"alg {shown(header.get('alg'))}, not {alg}")
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=SESSION_AUDIENCE,
                issuer=self.issuer,
                leeway=CLOCK_SKEW,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            self.refusals.refused_by(exc, token, self.issuer, fresh=fresh)
            return None
        except (KeyError, ValueError, TypeError):
            return None
        # An OAuth access token of ours is never a session (README, "Security").
        if header.get("typ") == "at+jwt":
            return None
        if not user_id_is_safe(str(claims["sub"])):
            log.warning("session refused: its user id is not visible ASCII")
            return None
        return User(
            sub=str(claims["sub"]),
            email=claims.get("email"),
            name=claims.get("name"),
            session_id=claims.get("sessionId"),
        )

    async def lookup(
        self, cookie: str | None, better_auth_cookie: str | None, *, confirm: bool = False
    ) -> SessionLookup:
        """``confirm``: ask the app even when the session JWT cookie verifies.
        That cookie stays valid for up to 15 minutes after the app ended the
        session (revoke-sessions, a password change, a ban); only the app
        knows whether the session row still lives."""
        if self.keys and not confirm:
            for source in (cookie, better_auth_cookie):
                if not source:
                    continue
                jar = parse_cookie_header(source)
                for name in self.jwt_cookie_names:
                    if name in jar:
                        user = self.verify_session_jwt(jar[name])
                        if user:
                            return SessionLookup(user, source="cookie")
        if not cookie and not better_auth_cookie:
            return SessionLookup(None)
        headers = []
        if cookie:
            headers.append(("cookie", cookie))
        if better_auth_cookie:
            headers.append(("better-auth-cookie", better_auth_cookie))
        headers.append(("accept", "application/json"))
        headers.append(("host", self.upstream.base_url.split("://", 1)[1]))
        if self.keys:
            return await self._ask(self.token_path, headers, self._from_token)
        return await self._ask(self.session_path, headers, self._from_session)

    async def _ask(self, path: str, headers: list[tuple[str, str]], parse: Any) -> SessionLookup:
        # The upstream client's errors become the bridge's own, here only.
        try:
            response = await self.upstream.request("GET", path, headers)
            try:
                body = await response.read(limit=256 * 1024)
            finally:
                response.release()
        except UpstreamError as exc:
            raise SessionUnavailable(str(exc)) from exc
        cookies = response.set_cookies()
        if self.cookie_domain:
            cookies = [drop_cookie_domain(c, self.cookie_domain) for c in cookies]
        if response.status in (401, 403):
            return SessionLookup(None, cookies)
        if response.status != 200:
            raise SessionUnavailable(f"{path} answered {response.status}")
        try:
            user = parse(json.loads(body) if body else None)
        except (ValueError, TypeError, KeyError):
            raise SessionUnavailable(f"{path} answered something that is not a session") from None
        return SessionLookup(user, cookies, source="convex-token" if self.keys else "get-session")

    def _from_token(self, body: Any) -> User | None:
        token = body.get("token") if isinstance(body, dict) else None
        return self.verify_session_jwt(token, fresh=True) if isinstance(token, str) else None

    @staticmethod
    def _from_session(body: Any) -> User | None:
        if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
            return None
        user = body["user"]
        session = body.get("session")
        session = session if isinstance(session, dict) else {}
        if not user_id_is_safe(str(user["id"])):
            log.warning("session refused: its user id is not visible ASCII")
            return None
        return User(
            sub=str(user["id"]),
            email=user.get("email"),
            name=user.get("name"),
            session_id=session.get("id"),
        )
