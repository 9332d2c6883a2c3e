"""The pages a person sees: rendered from Jinja2 templates (autoescaped),
branded by configuration, overridable by name from ``templates_dir``.

Pages are protocol-free views: the endpoints decide, these only render. Every
page is unframeable and uncached; its Content-Security-Policy allows no
script, and a form only where it may go: the consent form posts to the
sidecar and is answered with a 303 to the client's redirect URI, and Chromium
applies ``form-action`` to that redirect too (CSP Level 3), so the redirect
URI's origin (or its private-use scheme) is listed for that page alone.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from sidecar.config import Settings
from sidecar.oauth.client_model import Client
from sidecar.oauth.errors import OAuthError, SlowDown
from sidecar.store import StoreUnavailable
from sidecar.urls import is_loopback

BASE_HEADERS = {
    "X-Frame-Options": "DENY",  # RFC 9700 section 4.16, for browsers without CSP 2
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


def form_action_source(redirect_uri: str) -> str:
    """The CSP source that lets a form's redirect reach ``redirect_uri``: its
    origin for http(s), its scheme (``cursor:``) for a private-use one."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


def content_security_policy(form_action: list[str] | None) -> str:
    forms = " ".join(["'self'", *form_action]) if form_action is not None else "'none'"
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
        f"frame-ancestors 'none'; base-uri 'none'; form-action {forms}"
    )


class Pages:
    def __init__(self, settings: Settings) -> None:
        loaders: list[Any] = []
        if settings.templates_dir:
            loaders.append(FileSystemLoader(settings.templates_dir))
        loaders.append(PackageLoader("sidecar.oauth", "templates"))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(["html"], default=True),
        )
        self.env.globals["brand"] = {
            "name": settings.brand_name,
            "logo_url": settings.brand_logo_url,
            "color": settings.brand_color,
            "terms_url": settings.terms_url,
            "privacy_url": settings.privacy_url,
        }

    def page(
        self,
        template: str,
        status: int = 200,
        cookies: list[bytes] | None = None,
        form_action: list[str] | None = None,
        referrer_policy: str = "no-referrer",
        **context: Any,
    ) -> HTMLResponse:
        """``form_action``: where the page's forms may go besides the sidecar
        itself; None for a page without a form. ``referrer_policy``: with
        ``no-referrer`` a browser sends ``Origin: null`` on the page's form
        posts, so a page whose post checks its Origin uses ``same-origin``."""
        headers = {
            **BASE_HEADERS,
            "Referrer-Policy": referrer_policy,
            "Content-Security-Policy": content_security_policy(form_action),
        }
        html = self.env.get_template(template).render(**context)
        response = HTMLResponse(html, status_code=status, headers=headers)
        add_cookies(response, cookies)
        return response

    def error(
        self, title: str, message: str, status: int = 400, error: str | None = None
    ) -> Response:
        return self.page("error.html", status, title=title, message=message, error=error)

    def consent(
        self,
        client: Client,
        *,
        scope: tuple[str, ...],
        allowed: set[str],
        resource: str,
        redirect_uri: str,
        cookies: list[bytes],
        **context: Any,
    ) -> Response:
        """The consent page. Step-up asks only for what is new; what the
        person allowed before is listed apart."""
        new = [s for s in scope if s not in allowed]
        kept = [s for s in scope if s in allowed]
        cimd = client.source == "cimd"
        return self.page(
            "consent.html",
            cookies=cookies,
            form_action=[form_action_source(redirect_uri)],
            # With no-referrer a browser posts the form with ``Origin: null``,
            # which the consent endpoint refuses; the 303 to the client still
            # carries no-referrer, so the client never sees it.
            referrer_policy="same-origin",
            client_name=client.client_name or client.client_id,
            client_uri=client.client_uri,
            # CIMD: the document's host is what vouches for the name, so the
            # person sees it beside the name; a document whose every redirect
            # is localhost could have been published by anyone.
            document_host=urlsplit(client.client_id).hostname if cimd else None,
            only_localhost=cimd
            and all(is_loopback(urlsplit(u).hostname) for u in client.redirect_uris),
            unverified=client.source == "dcr",
            redirect_host=redirect_host(redirect_uri),
            # What a grant always lets a client do, whatever its scopes say
            # (an MCP client may ask for nothing but offline_access).
            scope_lines=(
                []
                if kept
                else ["Act as you on the service below, until you revoke it in Connected apps"]
            )
            + [SCOPE_WORDS.get(s, s) for s in new],
            kept_lines=[SCOPE_WORDS.get(s, s) for s in kept],
            resource=resource,
            **context,
        )

    def expired(self) -> Response:
        return self.error(
            "This sign-in request has expired", "Go back to the application and connect again."
        )

    def already_handled(self) -> Response:
        return self.error(
            "Request already handled", "This sign-in request was already completed.", 400
        )

    def refused_form(self) -> Response:
        return self.error("Request refused", "The form could not be verified.", 403)

    def unavailable(self) -> Response:
        return self.error(
            "Temporarily unavailable",
            "Sign-in is unavailable for a moment; try again shortly.",
            503,
        )


def redirect_host(redirect_uri: str) -> str:
    """How a redirect URI's destination is named to the person."""
    parts = urlsplit(redirect_uri)
    return parts.netloc or parts.scheme + ":"


def add_cookies(response: Response, cookies: list[bytes] | None) -> None:
    for cookie in cookies or ():
        response.raw_headers.append((b"set-cookie", cookie))


class ShowsPages(Protocol):
    pages: Pages


S = TypeVar("S", bound=ShowsPages)
PageHandler = Callable[[S, Request], Awaitable[Response]]


def html_page(handler: PageHandler[S]) -> PageHandler[S]:
    """A page handler's errors as pages, in one place (as ``oauth_json`` is
    for JSON): the store away is the one 503 page; a rate limit (SlowDown)
    is 429 with its Retry-After; any other OAuthError raised by the handler
    (a malformed query or form, a body too large or too slow) is an
    "Invalid request" page with its status. Errors that go back to the
    client as a redirect are the handler's own business."""

    @functools.wraps(handler)
    async def wrapped(self: S, request: Request) -> Response:
        try:
            return await handler(self, request)
        except StoreUnavailable:
            return self.pages.unavailable()
        except SlowDown as exc:
            response = self.pages.error("Too many requests", "Wait a moment and try again.", 429)
            response.headers.update(exc.headers)
            return response
        except OAuthError as exc:
            return self.pages.error("Invalid request", exc.description, exc.status)

    return wrapped
