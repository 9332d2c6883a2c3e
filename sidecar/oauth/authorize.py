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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sidecar.config import Settings
from sidecar.oauth import pkce
from sidecar.oauth.clients import Client, ClientRegistry, redirect_uri_matches
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
from sidecar.oauth.params import form_params, query_params
from sidecar.oauth.ratelimit import RateLimiter, client_ip
from sidecar.proxy.upstream import UpstreamError
from sidecar.session import SessionBridge
from sidecar.session.bridge import SessionLookup
from sidecar.store import Store, StoreUnavailable

log = structlog.get_logger("sidecar.oauth")

PENDING = "pending"
PAGE_HEADERS = {
    # RFC 9700 section 4.16: the consent page must not be framed.
    "Content-Security-Policy": "frame-ancestors 'none'; default-src 'none'; "
    "style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
SCOPE_WORDS = {
    "openid": "Know who you are (your user id)",
    "profile": "See your name",
    "email": "See your email address",
    "offline_access": "Stay connected when you are not using it (refresh tokens)",
}
MAX_STATE = 2048

templates = Environment(
    loader=PackageLoader("sidecar.oauth", "templates"),
    autoescape=select_autoescape(["html"], default=True),
)


def page(
    template: str, status: int = 200, cookies: list[bytes] | None = None, **context: Any
) -> HTMLResponse:
    response = HTMLResponse(
        templates.get_template(template).render(**context), status_code=status, headers=PAGE_HEADERS
    )
    _add_cookies(response, cookies)
    return response


def error_page(title: str, message: str, status: int = 400, error: str | None = None) -> Response:
    return page("error.html", status, title=title, message=message, error=error)


def unavailable() -> Response:
    return error_page(
        "Temporarily unavailable", "Sign-in is unavailable for a moment; try again shortly.", 503
    )


def _add_cookies(response: Response, cookies: list[bytes] | None) -> None:
    for cookie in cookies or ():
        response.raw_headers.append((b"set-cookie", cookie))


@dataclass
class AuthorizationEndpoint:
    settings: Settings
    store: Store
    clients: ClientRegistry
    grants: Grants
    bridge: SessionBridge
    limiter: RateLimiter

    async def limited(self, request: Request) -> Response | None:
        """A 429 page when this IP is over rate_limit_per_ip, else None."""
        try:
            await self.limiter.check(
                "authorize-ip", client_ip(request, self.settings), self.settings.rate_limit_per_ip
            )
        except OAuthError as exc:
            response = error_page("Too many requests", "Wait a moment and try again.", 429)
            response.headers.update(exc.headers)
            return response
        except StoreUnavailable:
            return unavailable()
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
        _add_cookies(response, cookies)
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
            return error_page("Invalid request", exc.description)
        client_id = params.get("client_id", "")
        try:
            client = await self.clients.get(client_id)
        except StoreUnavailable:
            return error_page(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if client is None:
            return error_page(
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
            return error_page(
                "Invalid redirect address",
                "The application asked to send you to an address it did not "
                "register, so you are not being sent anywhere.",
                400,
                "invalid_request",
            )
        # From here on, errors go back to the client.
        pending: dict[str, Any] = {"redirect_uri": redirect_uri, "state": params.get("state")}
        try:
            pending.update(self.validate(params, client))
        except OAuthError as exc:
            return self.error_to_client(pending, exc)
        request_id = secrets.token_urlsafe(32)
        pending.update(
            request_id=request_id,
            client_id=client.client_id,
            csrf=secrets.token_urlsafe(32),
            login_prompted=False,
            created=int(time.time()),
        )
        try:
            await self.store.put(
                PENDING, request_id, pending, ttl=self.settings.pending_authorization_ttl
            )
        except StoreUnavailable:
            return error_page(
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
        scope = self.scopes_for(params.get("scope"), client)
        resource = self.resource_for(params.get("resource"))
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

    def scopes_for(self, requested: str | None, client: Client) -> list[str]:
        allowed = client.allowed_scopes(self.settings.scopes)
        if requested is None or not requested.strip():
            return sorted(set(self.settings.default_scopes) & allowed)
        wanted = requested.split()
        unknown = set(wanted) - set(self.settings.scopes)
        if unknown:
            raise InvalidScope(f"unknown scope {' '.join(sorted(unknown))}")
        if not set(wanted) <= allowed:
            raise InvalidScope("scope not allowed for this client")
        return list(dict.fromkeys(wanted))

    def resource_for(self, requested: str | None) -> str:
        """RFC 8707: one of the configured resources; absent means the default."""
        if requested is None or not requested.strip():
            return self.settings.default_resource.url
        values = set(requested.split())
        if len(values) != 1:
            raise InvalidTarget("one resource per authorization")
        value = values.pop()
        canonical = value.rstrip("/")  # resources are kept without a trailing slash
        known = {r.url for r in self.settings.resources} | {self.settings.default_resource.url}
        if "#" in value or canonical not in known:
            raise InvalidTarget("resource is not one this server issues tokens for")
        return canonical

    # -- the user ---------------------------------------------------------------

    async def who(self, request: Request) -> SessionLookup:
        return await self.bridge.lookup(
            request.headers.get("cookie"), request.headers.get("better-auth-cookie")
        )

    def login_redirect(self, pending: dict[str, Any], cookies: list[bytes]) -> Response:
        back = f"{self.settings.public_url}/oauth/authorize/continue?" + urlencode(
            {"request": pending["request_id"]}
        )
        login = self.settings.login_url
        if login.startswith("/"):
            login = self.settings.public_url + login
        separator = "&" if urlsplit(login).query else "?"
        response = RedirectResponse(
            login + separator + urlencode({self.settings.login_return_param: back}), 303
        )
        response.headers.update({"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        _add_cookies(response, cookies)
        return response

    async def resume(self, request: Request, pending: dict[str, Any], client: Client) -> Response:
        try:
            session = await self.who(request)
        except UpstreamError as exc:
            log.warning("session bridge failed", error=str(exc))
            return error_page(
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
                    return self.error_to_client(
                        pending, LoginRequired("the user is not signed in"), session.set_cookies
                    )
                return self.login_redirect(pending, session.set_cookies)
            user = session.user
            if "consent" not in prompt and await self.grants.remembered_consent(
                user.sub, client.client_id, pending["resource"], pending["scope"]
            ):
                if await self.store.take(PENDING, pending["request_id"]) is None:
                    return error_page(
                        "Request already handled",
                        "This sign-in request was already completed.",
                        400,
                    )
                return await self.approve(pending, user, session.set_cookies)
            if "none" in prompt:
                await self.store.delete(PENDING, pending["request_id"])
                return self.error_to_client(
                    pending, ConsentRequired("consent is needed"), session.set_cookies
                )
            pending["sub"] = user.sub
            await self.save(pending)
        except StoreUnavailable:
            return error_page(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        return self.consent_page(
            pending, client, user.email or user.name or user.sub, session.set_cookies
        )

    async def save(self, pending: dict[str, Any]) -> None:
        remaining = max(
            1, pending["created"] + self.settings.pending_authorization_ttl - int(time.time())
        )
        await self.store.put(PENDING, pending["request_id"], pending, ttl=remaining)

    def consent_page(
        self, pending: dict[str, Any], client: Client, user_label: str, cookies: list[bytes]
    ) -> Response:
        return page(
            "consent.html",
            cookies=cookies,
            client_name=client.client_name or client.client_id,
            client_uri=client.client_uri,
            redirect_host=urlsplit(pending["redirect_uri"]).netloc
            or urlsplit(pending["redirect_uri"]).scheme + ":",
            scope_lines=[SCOPE_WORDS.get(s, s) for s in pending["scope"]]
            or ["Act on your behalf on this service"],
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
            return error_page("Invalid request", exc.description)
        except StoreUnavailable:
            return error_page(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if pending is None or client is None:
            return error_page(
                "This sign-in request has expired",
                "Go back to the application and connect again.",
                400,
            )
        return await self.resume(request, pending, client)

    # -- POST /oauth/consent ----------------------------------------------------

    async def consent(self, request: Request) -> Response:
        if (refused := await self.limited(request)) is not None:
            return refused
        try:
            form = await form_params(
                request, self.settings.max_body_bytes, self.settings.body_timeout
            )
        except OAuthError as exc:
            return error_page("Invalid request", exc.description, exc.status)
        request_id = form.get("request", "")
        try:
            pending = await self.store.get(PENDING, request_id) if request_id else None
        except StoreUnavailable:
            return error_page(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
        if pending is None or "sub" not in pending:
            return error_page(
                "This sign-in request has expired",
                "Go back to the application and connect again.",
                400,
            )
        # CSRF: the token is bound to this pending request, and the signed-in
        # user must be the one the page was shown to.
        if not hmac.compare_digest(form.get("csrf", ""), pending["csrf"]):
            return error_page("Request refused", "The form could not be verified.", 403)
        try:
            session = await self.who(request)
        except UpstreamError:
            return error_page(
                "Sign-in is unavailable", "We could not reach the app to check who you are.", 502
            )
        if session.user is None or session.user.sub != pending["sub"]:
            return error_page(
                "Request refused", "You are no longer signed in as the user who was asked.", 403
            )
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return error_page("Invalid request", "Choose Allow or Deny.", 400)
        try:
            # Single use: a replayed or double-clicked form finds nothing.
            if await self.store.take(PENDING, request_id) is None:
                return error_page(
                    "Request already handled", "This sign-in request was already completed.", 400
                )
            # RFC 9700 section 4.12: 303 after a form POST.
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
            return error_page(
                "Temporarily unavailable",
                "Sign-in is unavailable for a moment; try again shortly.",
                503,
            )
