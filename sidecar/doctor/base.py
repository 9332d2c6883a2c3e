"""What every check of ``sidecar doctor`` shares: the options, the report,
and one HTTP client that remembers which origins did not answer, so a check
that needs one says so instead of waiting for it again."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from sidecar.doctor.report import Report, Unreached
from sidecar.urls import is_loopback


@dataclass(frozen=True)
class Options:
    auth_base_path: str = "/api/auth"
    login_return_param: str = "callbackURL"
    verify: ssl.SSLContext | bool = True
    timeout: float = 10.0
    # From --session-issuer or the sidecar's configuration (--config): the
    # issuer the sidecar expects in the app's session JWTs.
    session_issuer: str | None = None
    # From the configuration's static JWKS: the kids the sidecar verifies with.
    session_kids: frozenset[str] | None = None
    # From the configuration: the sidecar's public origin and its issuer.
    public_url: str | None = None
    issuer: str | None = None
    config_source: str | None = None  # where they were read, said in the lines


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname)


def json_body(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


class Context:
    def __init__(self, url: str, options: Options) -> None:
        self.url = url.rstrip("/") if urlsplit(url).path not in ("", "/") else url
        self.origin = origin_of(url)
        self.options = options
        self.auth_base_path = options.auth_base_path.rstrip("/")
        self.return_param = options.login_return_param
        self.verify = options.verify
        self.http = httpx.Client(verify=options.verify, timeout=options.timeout)
        self.report = Report(url)
        self.challenge: dict[str, str] = {}
        self.prm: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}
        self.unreachable: dict[str, str] = {}  # origin -> the line that found out
        self.current = ""  # the line being checked

    @property
    def public_origin(self) -> str:
        """The sidecar's public origin: the configuration's, else the URL's."""
        return origin_of(self.options.public_url) if self.options.public_url else self.origin

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        origin = origin_of(url)
        if origin in self.unreachable:
            raise Unreached(origin, self.unreachable[origin])
        try:
            return self.http.request(method, url, **options)
        except httpx.TransportError:
            self.unreachable[origin] = self.current
            raise

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def document(self, response: httpx.Response) -> dict[str, Any]:
        body = json_body(response)
        return body if isinstance(body, dict) else {}


__all__ = ["Context", "Options", "is_loopback_url", "json_body", "origin_of"]
