"""Connected apps: the signed-in person's grants, and a Revoke button per
client.

The person is recognised through the same session bridge as
``/oauth/authorize``; an anonymous visitor goes to the app's login page and
comes back. Revoking ends every grant of that client for that person at once
(refresh tokens at once, access tokens at the gateway within
``revocation_cache_seconds``, on every replica) and forgets the remembered
consent, so the next authorization asks again.

The revoke form is CSRF-protected: its token is stored with the person it was
shown to, and a post is honoured only for that person (RFC 9700 section 4.7),
from the sidecar's own origin, and only for grants that are theirs.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sidecar.config import Settings
from sidecar.oauth.browser import Browser, from_own_origin
from sidecar.oauth.clients import ClientRegistry
from sidecar.oauth.grants import Grants
from sidecar.oauth.pages import SCOPE_WORDS, Pages, html_page
from sidecar.oauth.params import form_params
from sidecar.oauth.records import Grant
from sidecar.observability.metrics import token_event
from sidecar.proxy.upstream import UpstreamError
from sidecar.session.bridge import SessionLookup
from sidecar.store import Store

log = structlog.get_logger("sidecar.oauth")

ACCOUNT_CSRF = "account_csrf"
CSRF_TTL = 3600
ACCOUNT_PATH = "/oauth/account"


def when(timestamp: int | None) -> str:
    if not timestamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


@dataclass
class ConnectedApps:
    settings: Settings
    store: Store
    clients: ClientRegistry
    grants: Grants
    browser: Browser
    pages: Pages

    async def _who(self, request: Request) -> SessionLookup | Response:
        """The app's answer about who is asking, or the page saying it could
        not be asked."""
        try:
            return await self.browser.who(request)
        except UpstreamError:
            return self.pages.error(
                "Sign-in is unavailable", "We could not reach the app to check who you are.", 502
            )

    @html_page
    async def page(self, request: Request) -> Response:
        await self.browser.check_rate(request)
        session = await self._who(request)
        if isinstance(session, Response):
            return session
        if session.user is None:
            back = self.settings.public_url + ACCOUNT_PATH
            return self.browser.login_redirect_to(back, session.set_cookies)
        user = session.user
        rows = await self.rows(user.sub)
        csrf = secrets.token_urlsafe(32)
        await self.store.put(ACCOUNT_CSRF, csrf, {"sub": user.sub}, ttl=CSRF_TTL)
        return self.pages.page(
            "account.html",
            cookies=session.set_cookies,
            form_action=[],
            referrer_policy="same-origin",
            user_label=user.email or user.name or user.sub,
            apps=rows,
            csrf=csrf,
            action=f"{self.settings.public_url}{ACCOUNT_PATH}/revoke",
            revoked=request.query_params.get("revoked"),
        )

    async def rows(self, sub: str) -> list[dict[str, Any]]:
        """One row per client: what it was granted, on what, since when."""
        by_client: dict[str, list[Grant]] = {}
        for grant in await self.grants.grants_of(sub):
            by_client.setdefault(grant.client_id, []).append(grant)
        rows = []
        for client_id, grants in by_client.items():
            client = await self.clients.get(client_id)
            scopes = sorted({s for g in grants for s in g.scope})
            refreshed = [g.last_refreshed for g in grants if g.last_refreshed]
            rows.append(
                {
                    "client_id": client_id,
                    "name": (client.client_name if client else None) or client_id,
                    "site": client.client_uri if client else None,
                    "unverified": client is not None and client.source == "dcr",
                    "scopes": [SCOPE_WORDS.get(s, s) for s in scopes],
                    "resources": sorted({str(g.resource) for g in grants}),
                    "granted": when(min(g.created for g in grants)),
                    "refreshed": when(max(refreshed) if refreshed else None),
                    "grants": len(grants),
                }
            )
        return sorted(rows, key=lambda r: str(r["name"]).lower())

    @html_page
    async def revoke(self, request: Request) -> Response:
        await self.browser.check_rate(request)
        if not from_own_origin(request, self.settings.public_url):
            return self.pages.error("Request refused", "The form came from another site.", 403)
        form = await form_params(request, self.settings.max_body_bytes, self.settings.body_timeout)
        session = await self._who(request)
        if isinstance(session, Response):
            return session
        if session.user is None:
            return self.pages.error("Request refused", "You are not signed in.", 403)
        sub = session.user.sub
        token = form.get("csrf", "")
        shown = await self.store.get(ACCOUNT_CSRF, token) if token else None
        # CSRF: the token must be one shown to this very person.
        if shown is None or not hmac.compare_digest(str(shown.get("sub")).encode(), sub.encode()):
            return self.pages.error("Request refused", "The form could not be verified.", 403)
        client_id = form.get("client_id", "")
        ended = [g for g in await self.grants.grants_of(sub) if g.client_id == client_id]
        if not ended:
            return self.pages.error(
                "Nothing to revoke", "This application has no access to your account.", 404
            )
        for grant in ended:
            await self.grants.end_grant(grant)
        token_event("revoked")
        log.info("grants revoked by the person", client_id=client_id, grants=len(ended))
        response = RedirectResponse(f"{self.settings.public_url}{ACCOUNT_PATH}?revoked=1", 303)
        response.headers.update({"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        return response
