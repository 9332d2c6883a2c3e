"""The authorization endpoint, its resume address and the consent page.

Order matters (RFC 9700 section 4.11, RFC 6749 section 4.1.2.1): the client
and its redirect URI are validated first, and until they are, errors are
shown as a page and never redirected. After that, errors go back to the
client with ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sidecar.config import Settings
from sidecar.oauth import pkce
from sidecar.oauth.browser import Browser, from_own_origin
from sidecar.oauth.client_model import Client, client_family, redirect_uri_matches
from sidecar.oauth.clients import ClientRegistry
from sidecar.oauth.consents import Consents, consent_may_be_skipped
from sidecar.oauth.errors import (
    AccessDenied,
    ConsentRequired,
    InvalidRequest,
    LoginRequired,
    OAuthError,
    UnsupportedResponseType,
)
from sidecar.oauth.grants import Grants
from sidecar.oauth.pages import Pages, add_cookies, html_page, redirect_host
from sidecar.oauth.params import form_params, query_params
from sidecar.oauth.pending import PendingAuthorization, PendingAuthorizations
from sidecar.oauth.records import AuthorizationCode, Profile
from sidecar.oauth.scopes import known_resources, resource_for, scopes_for
from sidecar.observability.metrics import authorization_outcome
from sidecar.proxy.upstream import UpstreamError
from sidecar.session.bridge import SessionLookup, User
from sidecar.urls import is_loopback

log = structlog.get_logger("sidecar.oauth")

MAX_STATE = 2048
PROMPTS = {"none", "login", "consent", "select_account"}


@dataclass
class AuthorizationEndpoint:
    settings: Settings
    clients: ClientRegistry
    grants: Grants
    consents: Consents
    browser: Browser
    pages: Pages
    pending: PendingAuthorizations

    # -- redirects back to the client -----------------------------------------

    def redirect_to_client(
        self,
        redirect_uri: str,
        params: dict[str, str],
        cookies: list[bytes] | None = None,
        status: int = 302,
    ) -> Response:
        params = {**params, "iss": self.settings.issuer}  # RFC 9207
        separator = "&" if urlsplit(redirect_uri).query else "?"
        response = RedirectResponse(redirect_uri + separator + urlencode(params), status)
        response.headers.update({"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        add_cookies(response, cookies)
        return response

    def error_to_client(
        self,
        redirect_uri: str,
        state: str | None,
        exc: OAuthError,
        cookies: list[bytes] | None = None,
        status: int = 302,
    ) -> Response:
        params = {"error": exc.error}
        if exc.description:
            params["error_description"] = exc.description
        if state is not None:
            params["state"] = state
        return self.redirect_to_client(redirect_uri, params, cookies, status)

    # -- GET /oauth/authorize ---------------------------------------------------

    @html_page
    async def authorize(self, request: Request) -> Response:
        await self.browser.check_rate(request)
        params = query_params(request)
        client = await self.clients.get(params.get("client_id", ""))
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
        try:
            pending = self.validate(params, client, redirect_uri)
        except OAuthError as exc:
            return await self.refuse(request, redirect_uri, params.get("state"), client, exc)
        # Not stored yet: resume() writes it only if the person has to come
        # back to it (the login page, the consent form).
        return await self.resume(request, pending, client, stored=False)

    def validate(
        self, params: dict[str, str], client: Client, redirect_uri: str
    ) -> PendingAuthorization:
        if params.get("response_type") != "code":
            raise UnsupportedResponseType("response_type must be code")
        challenge = params.get("code_challenge")
        if not challenge:
            raise InvalidRequest("code_challenge is required (PKCE)")
        if params.get("code_challenge_method") != "S256":
            # A missing method means plain (RFC 7636 section 4.3): refused too.
            raise InvalidRequest("code_challenge_method must be S256")
        if not pkce.valid_challenge(challenge):
            raise InvalidRequest("code_challenge is not a base64url SHA-256")
        state = params.get("state")
        if state is not None and len(state) > MAX_STATE:
            raise InvalidRequest("state is too long")
        resource = resource_for(self.settings, params.get("resource"))
        resources = known_resources(self.settings)
        scope = scopes_for(self.settings, params.get("scope"), client, resources[resource])
        prompt = set((params.get("prompt") or "").split())
        if not prompt <= PROMPTS:
            raise InvalidRequest("unsupported prompt value")
        if "none" in prompt and len(prompt) > 1:
            raise InvalidRequest("prompt=none cannot be combined")
        nonce = params.get("nonce")
        if nonce is not None and len(nonce) > MAX_STATE:
            raise InvalidRequest("nonce is too long")
        # No CSRF token yet: one is minted when the request is bound to the
        # person who sees its consent page (resume()).
        return PendingAuthorization(
            request_id=secrets.token_urlsafe(32),
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=challenge,
            scope=tuple(scope),
            resource=resource,
            prompt=tuple(sorted(prompt)),
            nonce=nonce,
        )

    # -- errors that may go back to the client ------------------------------------

    async def redirect_trusted(
        self, request: Request, client: Client, redirect_uri: str, session: SessionLookup | None
    ) -> bool:
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
        if session is None:
            try:
                session = await self.browser.who(request)
            except UpstreamError:
                return False
        if session.user is None:
            return False
        return await self.consents.has_approved(session.user.sub, client.client_id)

    async def refuse(
        self,
        request: Request,
        redirect_uri: str,
        state: str | None,
        client: Client,
        exc: OAuthError,
        cookies: list[bytes] | None = None,
        session: SessionLookup | None = None,
    ) -> Response:
        """``session``: this request's plain lookup of the person, if made."""
        if await self.redirect_trusted(request, client, redirect_uri, session):
            return self.error_to_client(redirect_uri, state, exc, cookies)
        return self.pages.page(
            "refused.html",
            400,
            cookies,
            client_name=client.client_name or client.client_id,
            redirect_host=redirect_host(redirect_uri),
            error=exc.error,
            description=exc.description,
        )

    # -- the person ---------------------------------------------------------------

    async def resume(
        self, request: Request, pending: PendingAuthorization, client: Client, *, stored: bool
    ) -> Response:
        """``stored``: whether ``pending`` is in the store (the continue link)
        and has to be taken from it, single use, before it is answered."""
        try:
            first = await self.browser.who(request)
            session = await self.browser.live_session(request, first)
        except UpstreamError as exc:
            log.warning("session bridge failed", error=str(exc))
            return self.pages.error(
                "Sign-in is unavailable",
                "We could not reach the app to check who you are. Try again in a moment.",
                502,
            )
        prompt, cookies = set(pending.prompt), session.set_cookies
        if "login" in prompt and not pending.login_prompted:
            await self.pending.save(dataclasses.replace(pending, login_prompted=True))
            return self.browser.login_redirect(pending.request_id, cookies)
        user = session.user
        if user is None:
            if "none" not in prompt:
                authorization_outcome("login", client_family(client))
                if not stored:
                    await self.pending.save(pending)
                return self.browser.login_redirect(pending.request_id, cookies)
            failure: OAuthError = LoginRequired("the user is not signed in")
        else:
            skippable = consent_may_be_skipped(prompt, pending.scope)
            allowed = (
                await self.consents.consented_scopes(user.sub, client.client_id, pending.resource)
                if skippable or "none" not in prompt
                else set()
            )
            if skippable and set(pending.scope) <= allowed:
                authorization_outcome("remembered", client_family(client))
                if stored and await self.pending.take(pending.request_id) is None:
                    return self.pages.already_handled()
                return await self.approve(pending, user, cookies)
            if "none" not in prompt:
                return await self.show_consent(pending, client, user, cookies, allowed)
            failure = ConsentRequired("consent is needed")
        if stored:
            await self.pending.delete(pending.request_id)
        return await self.refuse(
            request, pending.redirect_uri, pending.state, client, failure, cookies, first
        )

    async def show_consent(
        self,
        pending: PendingAuthorization,
        client: Client,
        user: User,
        cookies: list[bytes],
        allowed: set[str],
    ) -> Response:
        if pending.sub != user.sub or not pending.csrf:
            # The resume link may be opened by anyone it is sent to, and
            # binds the request to them: with a CSRF token of their own,
            # so a token shown to anybody else (the person who sent the
            # link) no longer verifies (RFC 9700 section 4.7). The same
            # person reloading keeps theirs, so a second tab still works.
            pending = dataclasses.replace(pending, sub=user.sub, csrf=secrets.token_urlsafe(32))
            await self.pending.save(pending)
        return self.pages.consent(
            client,
            scope=pending.scope,
            allowed=allowed,
            resource=pending.resource,
            redirect_uri=pending.redirect_uri,
            user_label=user.email or user.name or user.sub,
            cookies=cookies,
            action=f"{self.settings.public_url}/oauth/consent",
            request_id=pending.request_id,
            csrf=pending.csrf,
        )

    async def approve(
        self, pending: PendingAuthorization, user: User, cookies: list[bytes], status: int = 302
    ) -> Response:
        code = await self.grants.new_code(
            AuthorizationCode(
                client_id=pending.client_id,
                redirect_uri=pending.redirect_uri,
                code_challenge=pending.code_challenge,
                scope=pending.scope,
                resource=pending.resource,
                nonce=pending.nonce,
                sub=user.sub,
                user=Profile(user.email, user.name),
                auth_time=int(time.time()),
            )
        )
        params = {"code": code}
        if pending.state is not None:
            params["state"] = pending.state
        return self.redirect_to_client(pending.redirect_uri, params, cookies, status)

    # -- GET /oauth/authorize/continue -----------------------------------------

    @html_page
    async def resume_endpoint(self, request: Request) -> Response:
        await self.browser.check_rate(request)
        pending = await self.pending.get(query_params(request).get("request", ""))
        client = await self.clients.get(pending.client_id) if pending else None
        if pending is None or client is None:
            return self.pages.expired()
        return await self.resume(request, pending, client, stored=True)

    # -- POST /oauth/consent ----------------------------------------------------

    @html_page
    async def consent(self, request: Request) -> Response:
        await self.browser.check_rate(request)
        if not from_own_origin(request, self.settings.public_url):
            # Never redirected to the client: the post is not the person's.
            return self.pages.error("Request refused", "The form came from another site.", 403)
        form = await form_params(request, self.settings.max_body_bytes, self.settings.body_timeout)
        pending = await self.pending.get(form.get("request", ""))
        if pending is None or not pending.bound:
            return self.pages.expired()
        # CSRF (RFC 9700 section 4.7): the token is the one shown to the
        # person this pending request is bound to, and that person is the
        # one signed in now.
        if not hmac.compare_digest(form.get("csrf", "").encode(), str(pending.csrf).encode()):
            return self.pages.refused_form()
        try:
            session = await self.browser.live_session(request)
        except UpstreamError:
            return self.pages.error(
                "Sign-in is unavailable", "We could not reach the app to check who you are.", 502
            )
        user = session.user
        if user is None or user.sub != pending.sub:
            return self.pages.error(
                "Request refused", "You are no longer signed in as the user who was asked.", 403
            )
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return self.pages.error("Invalid request", "Choose Allow or Deny.", 400)
        # Single use: a replayed or double-clicked form finds nothing.
        taken = await self.pending.take(pending.request_id)
        if taken is None:
            return self.pages.already_handled()
        if taken.sub != user.sub or taken.csrf != pending.csrf:
            return self.pages.refused_form()  # rebound to someone else since the read
        client = await self.clients.get(pending.client_id)
        authorization_outcome(
            "approved" if decision == "approve" else "denied", client_family(client)
        )
        # RFC 9700 section 4.12: 303 after a form POST.
        if decision == "deny":
            denied = AccessDenied("the user denied access")
            return self.error_to_client(
                pending.redirect_uri, pending.state, denied, session.set_cookies, status=303
            )
        await self.consents.remember_consent(
            user.sub, pending.client_id, pending.resource, pending.scope
        )
        return await self.approve(pending, user, session.set_cookies, status=303)
