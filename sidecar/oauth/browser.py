"""The person behind a browser request: who the app says they are (the
session bridge), whether their session still holds before a grant rests on
it, how often one address may ask for pages, and the way to the app's login
page and back."""

from __future__ import annotations

import time
from urllib.parse import urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sidecar.config import Settings
from sidecar.expiring import ExpiringCache
from sidecar.oauth.pages import add_cookies
from sidecar.oauth.ratelimit import RateLimiter, client_ip
from sidecar.session import SessionBridge
from sidecar.session.bridge import SessionLookup

log = structlog.get_logger("sidecar.oauth")

CONFIRMED_SESSIONS = 10_000  # Better Auth session ids kept as lately confirmed
# Sec-Fetch-Site values of a request a cross-site page cannot make: from the
# sidecar's own pages, or the person's own doing (typed, bookmarked).
OWN_FETCH_SITES = ("same-origin", "none")


def from_own_origin(request: Request, public_url: str) -> bool:
    """Whether a form post came from the sidecar's own pages (RFC 9700
    section 4.7; RFC 6749 section 10.12). ``Origin`` decides when present,
    and ``null`` (a sandboxed frame, a page that sends no referrer) is some
    other origin; a sibling host on the same site is another origin too.
    Without ``Origin``, Fetch Metadata's ``Sec-Fetch-Site`` does. With
    neither it is no browser's cross-site form, and the CSRF token, bound to
    the person, still has to match."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == public_url
    site = request.headers.get("sec-fetch-site")
    return site is None or site.lower() in OWN_FETCH_SITES


class Browser:
    def __init__(self, settings: Settings, bridge: SessionBridge, limiter: RateLimiter) -> None:
        self.settings = settings
        self.bridge = bridge
        self.limiter = limiter
        # Better Auth session id -> until when the app's confirmation holds.
        self._confirmed: ExpiringCache[str, bool] = ExpiringCache(CONFIRMED_SESSIONS)

    async def check_rate(self, request: Request) -> None:
        """Raises SlowDown (a 429 page, :func:`html_page`) when this address
        is over ``rate_limit_per_ip`` for pages."""
        await self.limiter.check(
            "authorize-ip", client_ip(request, self.settings), self.settings.rate_limit_per_ip
        )

    async def who(self, request: Request, *, confirm: bool = False) -> SessionLookup:
        return await self.bridge.lookup(
            request.headers.get("cookie"),
            request.headers.get("better-auth-cookie"),
            confirm=confirm,
        )

    async def live_session(
        self, request: Request, session: SessionLookup | None = None
    ) -> SessionLookup:
        """The person, as far as a new grant may rest on it. A person known
        only from the session JWT cookie is confirmed with the app first (the
        cookie outlives a revoked session by up to 15 minutes), at most once
        per ``session_recheck_seconds`` per Better Auth session. ``session``:
        this request's plain lookup, when already made."""
        if session is None:
            session = await self.who(request)
        user = session.user
        if user is None or session.source != "cookie":
            return session  # anonymous, or the app was asked just now
        ttl = self.settings.session_recheck_seconds
        now = time.monotonic()
        if ttl > 0 and user.session_id and self._confirmed.get(user.session_id, now):
            return session
        confirmed = await self.who(request, confirm=True)
        cookies = session.set_cookies + confirmed.set_cookies
        if confirmed.user is None or confirmed.user.sub != user.sub:
            log.info("session ended in the app; signing in again", sub=user.sub)
            return SessionLookup(None, cookies)
        if ttl > 0 and user.session_id:
            # Kept in this process (each replica asks the app once per period):
            # the hot path of a remembered consent stays free of store reads.
            self._confirmed.put(user.session_id, True, now + ttl)
        return SessionLookup(confirmed.user, cookies, confirmed.source)

    def login_redirect(self, request_id: str, cookies: list[bytes]) -> Response:
        """To the app's login page, and back to this pending request."""
        back = f"{self.settings.public_url}/oauth/authorize/continue?" + urlencode(
            {"request": request_id}
        )
        return self.login_redirect_to(back, cookies)

    def login_redirect_to(self, back: str, cookies: list[bytes]) -> Response:
        """To the app's login page, with ``back`` as its return address."""
        login = self.settings.login_url
        if login.startswith("/"):
            login = self.settings.public_url + login
        separator = "&" if urlsplit(login).query else "?"
        response = RedirectResponse(
            login + separator + urlencode({self.settings.login_return_param: back}), 303
        )
        response.headers.update({"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        add_cookies(response, cookies)
        return response
