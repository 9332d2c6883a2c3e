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

from typing import Any
from urllib.parse import urlsplit

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

from sidecar.config import Settings

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

    def unavailable(self) -> Response:
        return self.error(
            "Temporarily unavailable",
            "Sign-in is unavailable for a moment; try again shortly.",
            503,
        )


def add_cookies(response: Response, cookies: list[bytes] | None) -> None:
    for cookie in cookies or ():
        response.raw_headers.append((b"set-cookie", cookie))
