"""The authorization endpoint, its resume address and the consent page.

Order matters (RFC 9700 section 4.11, RFC 6749 section 4.1.2.1): the client
and its redirect URI are validated first, and until they are, errors are
shown as a page and never redirected. After that, errors go back to the
client with ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sidecar.config import Resource, Settings
from sidecar.oauth import pkce
from sidecar.oauth.clients import (
    Client,
    ClientRegistry,
    client_family,
    is_loopback,
    redirect_uri_matches,
)
from sidecar.oauth.errors import (
    ConsentRequired,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    LoginRequired,
    OAuthError,
    UnsupportedResponseType,
)
from sidecar.oauth.grants import Grants
from sidecar.oauth.pages import SCOPE_WORDS, Pages, add_cookies, form_action_source
from sidecar.oauth.params import form_params, query_params
from sidecar.oauth.ratelimit import RateLimiter, client_ip
from sidecar.observability.metrics import authorization_outcome
from sidecar.proxy.upstream import UpstreamError
from sidecar.session import SessionBridge
from sidecar.session.bridge import SessionLookup
from sidecar.store import Store, StoreUnavailable
from sidecar.urls import InvalidURL, canonical_url

log = structlog.get_logger("sidecar.oauth")

PENDING = "pending"
CONFIRMED_SESSIONS = 10_000  # Better Auth session ids kept as lately confirmed
MAX_STATE = 2048
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


def consent_may_be_skipped(prompt: set[str], scope: list[str]) -> bool:
    """Whether a remembered consent may answer this request.

    ``prompt=consent`` asks for the page, and gets it; except where it only
    accompanies ``offline_access``: the MCP TypeScript SDK (Claude Code,
    claude.ai, Desktop) adds both to every authorization, so honouring it
    would ask a person on every connect. OpenID Connect Core section 11 lets
    a server skip the prompt when other conditions permit offline access;
    here refresh tokens follow the client's registered grant, and the
    person's earlier consent to exactly these scopes (offline_access
    included) is that condition."""
    return "consent" not in prompt or "offline_access" in scope


@dataclass
class AuthorizationEndpoint:
    settings: Settings
    store: Store
    clients: ClientRegistry
    grants: Grants
    bridge: SessionBridge
    limiter: RateLimiter
    pages: Pages
    # Better Auth session id -> until when the app's confirmation holds.
    _confirmed: OrderedDict[str, float] = field(default_factory=OrderedDict)

    async def limited(self, request: Request) -> Response | None:
        """A 429 page when this IP is over rate_limit_per_ip, else None."""
        try:
            await self.limiter.check(
                "authorize-ip", client_ip(request, self.settings), self.settings.rate_limit_per_ip
            )
        except OAuthError as exc:
            response = self.pages.error("Too many requests", "Wait a moment and try again.", 429)
            response.headers.update(exc.headers)
            return response
        except StoreUnavailable:
            return self.pages.unavailable()
        return None

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    # -- redirects back to the client -----------------------------------------

    def redirect_to_client(
        self,
        redirect_uri: str,
        params: dict[str, str],
        cookies: list[bytes] | None = None,
        status: int = 302,
    ) -> Response:
        params = {**params, "iss": self.issuer}  # RFC 9207
        separator = "&" if urlsplit(redirect_uri).query else "?"
        response = RedirectResponse(redirect_uri + separator + urlencode(params), status)
        response.headers.update({"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        add_cookies(response, cookies)
        return response

    def error_to_client(
        self,
        pending: dict[str, Any],
        exc: OAuthError,
        cookies: list[bytes] | None = None,
        status: int = 302,
    ) -> Response:
        params = {"error": exc.error}
        if exc.description:
            params["error_description"] = exc.description
        if pending.get("state") is not None:
            params["state"] = pending["state"]
        return self.redirect_to_client(pending["redirect_uri"], params, cookies, status)

    # -- GET /oauth/authorize ---------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        if (refused := await self.limited(request)) is not None:
            return refused
        try:
            params = query_params(request)
        except InvalidRequest as exc:
            return self.pages.error("Invalid request", exc.description)
        client_id = params.get("client_id", "")
        try:
            client = await self.clients.get(client_id)
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if client is None:
            return self.pages.error(
                "Unknown application",
                "This application is not registered here, or its client metadata document "
                "could not be used. It may need to register again.",
                400,
                "invalid_client",
            )
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if not redirect_uri or not redirect_uri_matches(client.redirect_uris, redirect_uri):
            return self.pages.error(
                "Invalid redirect address",
                "The application asked to send you to an address it did not "
                "register, so you are not being sent anywhere.",
                400,
                "invalid_request",
            )
        # From here on, errors go back to the client, if its redirect URI
        # can be trusted with them (refuse()).
        pending: dict[str, Any] = {"redirect_uri": redirect_uri, "state": params.get("state")}
        try:
            pending.update(self.validate(params, client))
        except OAuthError as exc:
            return await self.refuse(request, pending, client, exc)
        request_id = secrets.token_urlsafe(32)
        # No CSRF token yet: one is minted when the request is bound to the
        # person who sees its consent page (resume()).
        pending.update(
            request_id=request_id,
            client_id=client.client_id,
            login_prompted=False,
            created=int(time.time()),
        )
        try:
            await self.store.put(
                PENDING, request_id, pending, ttl=self.settings.pending_authorization_ttl
            )
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        return await self.resume(request, pending, client)

    def validate(self, params: dict[str, str], client: Client) -> dict[str, Any]:
        if params.get("response_type") != "code":
            raise UnsupportedResponseType("response_type must be code")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if not challenge:
            raise InvalidRequest("code_challenge is required (PKCE)")
        if method != "S256":
            # A missing method means plain (RFC 7636 section 4.3): refused too.
            raise InvalidRequest("code_challenge_method must be S256")
        if not pkce.valid_challenge(challenge):
            raise InvalidRequest("code_challenge is not a base64url SHA-256")
        state = params.get("state")
        if state is not None and len(state) > MAX_STATE:
            raise InvalidRequest("state is too long")
        resource = self.resource_for(params.get("resource"))
        scope = self.scopes_for(params.get("scope"), client, self.resources[resource])
        prompt = set((params.get("prompt") or "").split())
        if not prompt <= {"none", "login", "consent", "select_account"}:
            raise InvalidRequest("unsupported prompt value")
        if "none" in prompt and len(prompt) > 1:
            raise InvalidRequest("prompt=none cannot be combined")
        nonce = params.get("nonce")
        if nonce is not None and len(nonce) > MAX_STATE:
            raise InvalidRequest("nonce is too long")
        return {
            "code_challenge": challenge,
            "scope": scope,
            "resource": resource,
            "prompt": sorted(prompt),
            "nonce": nonce,
        }

    @property
    def resources(self) -> dict[str, Resource]:
        known = {r.url: r for r in self.settings.resources}
        known.setdefault(self.settings.default_resource.url, self.settings.default_resource)
        return known

    def offered_scopes(self, resource: Resource) -> set[str]:
        """What the server offers for one resource: its own scopes (and what
        they include), and the server-wide ones that belong to no resource."""
        shared = set(self.settings.scopes) - self.settings.resource_scopes()
        return shared | self.settings.expand_scopes(resource.advertised_scopes)

    def scopes_for(self, requested: str | None, client: Client, resource: Resource) -> list[str]:
        """Step-up (MCP 2026-07-28, SEP-2350): a client re-authorizes with the
        union of what it had and what a challenge named, under its first
        registration, so the registration's ``scope`` is what it expected to
        ask for, not a ceiling; only an operator's pre-registered client is
        pinned to its list. A scope of another resource is not granted here
        (RFC 6749 section 3.3 lets the server grant less than asked)."""
        offered = self.offered_scopes(resource)
        pinned = client.allowed_scopes(self.settings.scopes) if client.pins_scopes else None
        if pinned is not None:
            offered &= pinned
        if requested is None or not requested.strip():
            wanted = [*self.settings.default_scopes, *resource.scopes]
            return [s for s in dict.fromkeys(wanted) if s in offered]
        wanted = list(dict.fromkeys(requested.split()))
        unknown = set(wanted) - set(self.settings.scopes)
        if unknown:
            raise InvalidScope(f"unknown scope {' '.join(sorted(unknown))}")
        if pinned is not None and not set(wanted) <= pinned:
            raise InvalidScope("scope not allowed for this client")
        return [s for s in wanted if s in offered]

    def resource_for(self, requested: str | None) -> str:
        """RFC 8707: one of the configured resources; absent means the default.
        Compared in canonical form (an uppercase scheme or host is accepted,
        as MCP 2026-07-28 asks)."""
        if requested is None or not requested.strip():
            return self.settings.default_resource.url
        values = set(requested.split())
        if len(values) != 1:
            raise InvalidTarget("one resource per authorization")
        try:
            canonical = canonical_url(values.pop())
        except InvalidURL:
            raise InvalidTarget("resource must be an absolute URL without a fragment") from None
        if canonical not in self.resources:
            raise InvalidTarget("resource is not one this server issues tokens for")
        return canonical

    # -- errors that may go back to the client ------------------------------------

    async def redirect_trusted(self, request: Request, client: Client, redirect_uri: str) -> bool:
        """OAuth 2.1 section 7.12.2, RFC 9700 section 4.11.2: redirect an error
        only where the redirect URI can be trusted, or the sidecar's origin
        becomes an open redirector for anyone who can register a client. A
        loopback or private-use redirect stays on the person's machine; an
        operator's pre-registered client is trusted; so is a client this
        person has already approved."""
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or is_loopback(parts.hostname):
            return True
        if client.source == "cli":
            return True
        try:
            session = await self.who(request)
        except UpstreamError:
            return False
        if session.user is None:
            return False
        return await self.grants.has_approved(session.user.sub, client.client_id)

    async def refuse(
        self,
        request: Request,
        pending: dict[str, Any],
        client: Client,
        exc: OAuthError,
        cookies: list[bytes] | None = None,
    ) -> Response:
        try:
            trusted = await self.redirect_trusted(request, client, pending["redirect_uri"])
        except StoreUnavailable:
            return self.pages.unavailable()
        if trusted:
            return self.error_to_client(pending, exc, cookies)
        return self.pages.page(
            "refused.html",
            400,
            cookies,
            client_name=client.client_name or client.client_id,
            redirect_host=_redirect_host(pending["redirect_uri"]),
            error=exc.error,
            description=exc.description,
        )

    # -- the user ---------------------------------------------------------------

    async def who(self, request: Request, *, confirm: bool = False) -> SessionLookup:
        return await self.bridge.lookup(
            request.headers.get("cookie"),
            request.headers.get("better-auth-cookie"),
            confirm=confirm,
        )

    async def live_session(self, request: Request) -> SessionLookup:
        """The person, as far as a new grant may rest on it. A person known
        only from the session JWT cookie is confirmed with the app first (the
        cookie outlives a revoked session by up to 15 minutes), at most once
        per ``session_recheck_seconds`` per Better Auth session."""
        session = await self.who(request)
        user = session.user
        if user is None or session.source != "cookie":
            return session  # anonymous, or the app was asked just now
        ttl = self.settings.session_recheck_seconds
        now = time.monotonic()
        if ttl > 0 and user.session_id and self._confirmed.get(user.session_id, 0.0) > now:
            return session
        confirmed = await self.who(request, confirm=True)
        cookies = session.set_cookies + confirmed.set_cookies
        if confirmed.user is None or confirmed.user.sub != user.sub:
            log.info("session ended in the app; signing in again", sub=user.sub)
            return SessionLookup(None, cookies)
        if ttl > 0 and user.session_id:
            # Kept in this process (each replica asks the app once per period):
            # the hot path of a remembered consent stays free of store reads.
            self._confirmed[user.session_id] = now + ttl
            self._confirmed.move_to_end(user.session_id)
            while len(self._confirmed) > CONFIRMED_SESSIONS:
                self._confirmed.popitem(last=False)
        return SessionLookup(confirmed.user, cookies, confirmed.source)

    def login_redirect(self, pending: dict[str, Any], cookies: list[bytes]) -> Response:
        back = f"{self.settings.public_url}/oauth/authorize/continue?" + urlencode(
            {"request": pending["request_id"]}
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

    async def resume(self, request: Request, pending: dict[str, Any], client: Client) -> Response:
        try:
            session = await self.live_session(request)
        except StoreUnavailable:
            return self.pages.unavailable()
        except UpstreamError as exc:
            log.warning("session bridge failed", error=str(exc))
            return self.pages.error(
                "Sign-in is unavailable",
                "We could not reach the app to check who you are. Try again in a moment.",
                502,
            )
        prompt = set(pending["prompt"])
        try:
            if "login" in prompt and not pending["login_prompted"]:
                pending["login_prompted"] = True
                await self.save(pending)
                return self.login_redirect(pending, session.set_cookies)
            if session.user is None:
                if "none" in prompt:
                    await self.store.delete(PENDING, pending["request_id"])
                    return await self.refuse(
                        request,
                        pending,
                        client,
                        LoginRequired("the user is not signed in"),
                        session.set_cookies,
                    )
                authorization_outcome("login", client_family(client))
                return self.login_redirect(pending, session.set_cookies)
            user = session.user
            if consent_may_be_skipped(prompt, pending["scope"]) and (
                await self.grants.remembered_consent(
                    user.sub, client.client_id, pending["resource"], pending["scope"]
                )
            ):
                authorization_outcome("remembered", client_family(client))
                if await self.store.take(PENDING, pending["request_id"]) is None:
                    return self.pages.error(
                        "Request already handled",
                        "This sign-in request was already completed.",
                        400,
                    )
                return await self.approve(pending, user, session.set_cookies)
            if "none" in prompt:
                await self.store.delete(PENDING, pending["request_id"])
                return await self.refuse(
                    request,
                    pending,
                    client,
                    ConsentRequired("consent is needed"),
                    session.set_cookies,
                )
            if pending.get("sub") != user.sub or not pending.get("csrf"):
                # The resume link may be opened by anyone it is sent to, and
                # binds the request to them: with a CSRF token of their own,
                # so a token shown to anybody else (the person who sent the
                # link) no longer verifies (RFC 9700 section 4.7). The same
                # person reloading keeps theirs, so a second tab still works.
                pending["sub"] = user.sub
                pending["csrf"] = secrets.token_urlsafe(32)
                await self.save(pending)
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        try:
            allowed = await self.grants.consented_scopes(
                user.sub, client.client_id, pending["resource"]
            )
        except StoreUnavailable:
            return self.pages.unavailable()
        return self.consent_page(
            pending, client, user.email or user.name or user.sub, session.set_cookies, allowed
        )

    async def save(self, pending: dict[str, Any]) -> None:
        remaining = max(
            1, pending["created"] + self.settings.pending_authorization_ttl - int(time.time())
        )
        await self.store.put(PENDING, pending["request_id"], pending, ttl=remaining)

    def consent_page(
        self,
        pending: dict[str, Any],
        client: Client,
        user_label: str,
        cookies: list[bytes],
        allowed: set[str] | None = None,
    ) -> Response:
        """Step-up asks only for what is new; what the person allowed before
        is listed apart."""
        allowed = allowed or set()
        new = [s for s in pending["scope"] if s not in allowed]
        kept = [s for s in pending["scope"] if s in allowed]
        return self.pages.page(
            "consent.html",
            cookies=cookies,
            form_action=[form_action_source(pending["redirect_uri"])],
            # With no-referrer a browser posts the form with ``Origin: null``,
            # which consent() refuses; the 303 to the client still carries
            # no-referrer (redirect_to_client), so the client never sees it.
            referrer_policy="same-origin",
            client_name=client.client_name or client.client_id,
            client_uri=client.client_uri,
            # CIMD: the document's host is what vouches for the name, so the
            # person sees it beside the name; a document whose every redirect
            # is localhost could have been published by anyone.
            document_host=urlsplit(client.client_id).hostname if client.source == "cimd" else None,
            only_localhost=client.source == "cimd"
            and all(is_loopback(urlsplit(u).hostname) for u in client.redirect_uris),
            unverified=client.source == "dcr",
            redirect_host=_redirect_host(pending["redirect_uri"]),
            # What a grant always lets a client do, whatever its scopes say
            # (an MCP client may ask for nothing but offline_access).
            scope_lines=(
                [] if kept else [f"Act as you at {pending['resource']}, until you revoke it"]
            )
            + [SCOPE_WORDS.get(s, s) for s in new],
            kept_lines=[SCOPE_WORDS.get(s, s) for s in kept],
            resource=pending["resource"],
            user_label=user_label,
            action=f"{self.settings.public_url}/oauth/consent",
            request_id=pending["request_id"],
            csrf=pending["csrf"],
        )

    async def approve(
        self, pending: dict[str, Any], user: Any, cookies: list[bytes], status: int = 302
    ) -> Response:
        code = await self.grants.new_code(
            {
                "client_id": pending["client_id"],
                "redirect_uri": pending["redirect_uri"],
                "code_challenge": pending["code_challenge"],
                "scope": pending["scope"],
                "resource": pending["resource"],
                "nonce": pending.get("nonce"),
                "sub": user.sub,
                "user": {"email": user.email, "name": user.name},
                "auth_time": int(time.time()),
            }
        )
        params = {"code": code}
        if pending.get("state") is not None:
            params["state"] = pending["state"]
        return self.redirect_to_client(pending["redirect_uri"], params, cookies, status)

    # -- GET /oauth/authorize/continue -----------------------------------------

    async def resume_endpoint(self, request: Request) -> Response:
        if (refused := await self.limited(request)) is not None:
            return refused
        try:
            request_id = query_params(request).get("request", "")
            pending = await self.store.get(PENDING, request_id) if request_id else None
            client = await self.clients.get(pending["client_id"]) if pending else None
        except InvalidRequest as exc:
            return self.pages.error("Invalid request", exc.description)
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if pending is None or client is None:
            return self.pages.error(
                "This sign-in request has expired",
                "Go back to the application and connect again.",
                400,
            )
        return await self.resume(request, pending, client)

    # -- POST /oauth/consent ----------------------------------------------------

    async def consent(self, request: Request) -> Response:
        if (refused := await self.limited(request)) is not None:
            return refused
        if not from_own_origin(request, self.settings.public_url):
            # Never redirected to the client: the post is not the person's.
            return self.pages.error("Request refused", "The form came from another site.", 403)
        try:
            form = await form_params(
                request, self.settings.max_body_bytes, self.settings.body_timeout
            )
        except OAuthError as exc:
            return self.pages.error("Invalid request", exc.description, exc.status)
        request_id = form.get("request", "")
        try:
            pending = await self.store.get(PENDING, request_id) if request_id else None
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if pending is None or "sub" not in pending or not pending.get("csrf"):
            return self.pages.error(
                "This sign-in request has expired",
                "Go back to the application and connect again.",
                400,
            )
        # CSRF (RFC 9700 section 4.7): the token is the one shown to the
        # person this pending request is bound to, and that person is the
        # one signed in now.
        if not hmac.compare_digest(form.get("csrf", "").encode(), str(pending["csrf"]).encode()):
            return self.pages.error("Request refused", "The form could not be verified.", 403)
        try:
            session = await self.live_session(request)
        except StoreUnavailable:
            return self.pages.unavailable()
        except UpstreamError:
            return self.pages.error(
                "Sign-in is unavailable", "We could not reach the app to check who you are.", 502
            )
        if session.user is None or session.user.sub != pending["sub"]:
            return self.pages.error(
                "Request refused", "You are no longer signed in as the user who was asked.", 403
            )
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return self.pages.error("Invalid request", "Choose Allow or Deny.", 400)
        try:
            # Single use: a replayed or double-clicked form finds nothing.
            taken = await self.store.take(PENDING, request_id)
            if taken is None:
                return self.pages.error(
                    "Request already handled", "This sign-in request was already completed.", 400
                )
            if taken.get("sub") != session.user.sub or taken.get("csrf") != pending["csrf"]:
                # Rebound to someone else between the read and the take.
                return self.pages.error("Request refused", "The form could not be verified.", 403)
            # RFC 9700 section 4.12: 303 after a form POST.
            client = await self.clients.get(pending["client_id"])
            authorization_outcome(
                "approved" if decision == "approve" else "denied", client_family(client)
            )
            if decision == "deny":
                from sidecar.oauth.errors import AccessDenied

                return self.error_to_client(
                    pending, AccessDenied("the user denied access"), session.set_cookies, status=303
                )
            await self.grants.remember_consent(
                session.user.sub, pending["client_id"], pending["resource"], pending["scope"]
            )
            return await self.approve(pending, session.user, session.set_cookies, status=303)
        except StoreUnavailable:
            return self.pages.error(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )


def _redirect_host(redirect_uri: str) -> str:
    parts = urlsplit(redirect_uri)
    return parts.netloc or parts.scheme + ":"
