"""``sidecar doctor URL``: the requests real MCP clients (and the people
signing in through them) make against the URL a person will paste, in their
order, as a checklist.

Most failures reported against MCP authorization servers are configuration
(an issuer that differs by a slash, a resource the gateway does not guard, a
login page that drops its return address, CORS that hides the challenge, an
app that does not trust the sidecar's origin), and each looks, from the
client, like a client that silently gives up. Every line says what was seen
and, when it failed, the key or app setting that fixes it. A request that
gets no answer is a failed line too; the lines needing that origin say they
were not run. The doctor stores nothing: it registers no client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from sidecar.config import ConfigError, env_names, load_settings
from sidecar.doctor.app_checks import AppChecks
from sidecar.doctor.base import Options
from sidecar.doctor.oauth_checks import OAuthChecks
from sidecar.doctor.report import Report, Unreached, network_failure
from sidecar.keys.static_jwks import StaticJwksError, parse_rows
from sidecar.urls import InvalidURL, canonical_url

STEPS = (
    ("MCP URL challenge", "mcp_challenge"),
    ("protected resource metadata", "resource_metadata"),
    ("issuer on the sidecar's origin", "issuer_origin"),
    ("authorization server metadata", "server_metadata"),
    ("challenge readable by a browser client", "browser_readable"),
    ("registration", "registration"),
    ("login page keeps its return address", "login_page"),
    ("Better Auth at auth_base_path", "better_auth"),
    ("sign-in accepted from the sidecar's origin", "sign_in_origin"),
    ("session JWT verifies at the sidecar", "session_jwt"),
    ("TLS and clock", "tls_and_clock"),
)


class Doctor(OAuthChecks, AppChecks):
    def run(self) -> Report:
        try:
            for name, method in STEPS:
                self.current = name
                step: Callable[[], bool] = getattr(self, method)
                self.step(name, step)
        finally:
            self.http.close()
        return self.report

    def step(self, name: str, check: Callable[[], bool]) -> None:
        try:
            check()
        except Unreached as exc:
            self.report.add(
                name, False, f"not run: {exc.origin} did not answer", f"see {exc.first!r} above"
            )
        except httpx.TransportError as exc:
            seen, fix = network_failure(exc, self._origin_of(exc))
            self.report.add(name, False, seen, fix)
        except (httpx.HTTPError, OSError) as exc:  # TLS of the certificate check, a bad URL
            seen, fix = network_failure(exc, self.origin)
            self.report.add(name, False, seen, fix)
        except Exception as exc:  # an answer no check expected: a line, never a traceback
            self.report.add(
                name,
                False,
                f"an answer the doctor could not read ({type(exc).__name__}: {exc})",
                "check what this URL answers; report it if the sidecar answered it",
            )

    def _origin_of(self, exc: httpx.TransportError) -> str:
        try:
            url = exc.request.url
        except RuntimeError:
            return self.origin
        return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def options_from_config(config: str, options: Options) -> Options:
    """What the sidecar itself is configured with (``config``: a TOML file,
    or empty for the environment and SIDECAR_CONFIG alone), as ``sidecar
    serve`` reads it. ConfigError when it does not load."""
    settings = load_settings(config or None)
    kids: frozenset[str] | None = None
    if settings.jwks:
        try:
            kids = frozenset(row.kid for row in parse_rows(str(settings.jwks)))
        except StaticJwksError as exc:
            raise ConfigError("jwks", str(exc)) from None
    return replace(
        options,
        auth_base_path=settings.auth_base_path,
        login_return_param=settings.login_return_param,
        # The sidecar checks the issuer only of the session JWTs it verifies
        # itself, with a static JWKS; without one, it asks get-session.
        session_issuer=options.session_issuer
        or (settings.session_issuer if settings.jwks else None),
        session_kids=kids,
        public_url=settings.public_url,
        issuer=settings.issuer,
        config_source=config or "the environment",
    )


def diagnose(url: str, *, config: str | None = None, **given: Any) -> Report:
    """``config``: read the sidecar's configuration too (see
    options_from_config); options given here win over it."""
    url = url.strip()
    report = Report(url)
    try:
        canonical_url(url)
    except InvalidURL as exc:
        report.add("MCP URL", False, str(exc), "give the MCP URL clients use, http(s)://host/path")
        return report
    options = Options()
    if config is not None:
        try:
            options = options_from_config(config, options)
        except ConfigError as exc:
            names = " / ".join(env_names(exc.key)) if exc.key != "config" else "--config"
            report.add(
                "the sidecar's configuration",
                False,
                f"{exc.key} ({names}): {exc.message}",
                "fix the configuration (sidecar check-config shows it), or run the doctor "
                "without --config",
            )
            return report
    options = replace(options, **{k: v for k, v in given.items() if v is not None})
    return Doctor(url, options).run()
