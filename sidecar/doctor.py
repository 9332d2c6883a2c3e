"""``sidecar doctor URL``: the requests real MCP clients make against the URL
a person will paste, in their order, as a checklist.

Most failures reported against MCP authorization servers are configuration
(an issuer that differs by a slash, a resource the gateway does not guard, a
login page that drops its return address, CORS that hides the challenge), and
each looks, from the client, like a client that silently gives up. Every line
says what was seen and, when it failed, the key or app setting that fixes it.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from sidecar.routes import prm_path
from sidecar.urls import InvalidURL, canonical_url, is_loopback

DOCTOR_ORIGIN = "https://doctor.invalid"  # a page on another origin, as a browser client is
DOCTOR_REDIRECT = "http://127.0.0.1:9/doctor"  # a loopback client's; never reached
CLOCK_SKEW = 60  # seconds
CERT_DAYS_WARNING = 14


@dataclass
class Check:
    name: str
    ok: bool
    seen: str
    fix: str = ""


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, seen: str, fix: str = "") -> bool:
        self.checks.append(Check(name, ok, seen, "" if ok else fix))
        return ok

    def text(self) -> str:
        lines = [f"sidecar doctor {self.url}"]
        for c in self.checks:
            lines.append(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.seen}")
            if c.fix:
                lines.append(f"      fix: {c.fix}")
        passed = sum(c.ok for c in self.checks)
        lines.append(f"{passed} passed, {len(self.checks) - passed} failed")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(
            {"url": self.url, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2
        )


def _is_loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname)


def _challenge_params(header: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


class Doctor:
    def __init__(
        self,
        url: str,
        *,
        auth_base_path: str = "/api/auth",
        login_return_param: str = "callbackURL",
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/") if urlsplit(url).path not in ("", "/") else url
        self.origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        self.auth_base_path = auth_base_path.rstrip("/")
        self.return_param = login_return_param
        self.verify = verify
        self.http = httpx.Client(verify=verify, timeout=timeout, follow_redirects=False)
        self.report = Report(url)
        self.prm: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}

    def run(self) -> Report:
        steps: list[Callable[[], bool]] = [
            self.mcp_challenge,
            self.resource_metadata,
            self.server_metadata,
            self.browser_readable,
            self.registration,
            self.login_page,
            self.app_side,
            self.tls_and_clock,
        ]
        try:
            for step in steps:
                try:
                    step()
                except httpx.HTTPError as exc:
                    self.report.add(
                        step.__name__.replace("_", " "),
                        False,
                        f"request failed: {exc}",
                        "check that the URL is reachable from here",
                    )
        finally:
            self.http.close()
        return self.report

    # -- 1. the MCP URL ----------------------------------------------------------

    def mcp_challenge(self) -> bool:
        r = self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
        header = r.headers.get("www-authenticate", "")
        params = _challenge_params(header)
        if (
            r.status_code == 401
            and header.lower().startswith("bearer")
            and params.get("resource_metadata")
        ):
            self.challenge = params
            scope = f", scope={params['scope']!r}" if "scope" in params else ""
            return self.report.add(
                "MCP URL challenge",
                True,
                f"401 with resource_metadata={params['resource_metadata']}{scope}",
            )
        self.challenge = {}
        return self.report.add(
            "MCP URL challenge",
            False,
            f"{r.status_code} without a Bearer resource_metadata challenge",
            "the endpoint is not guarded: add its path to SIDECAR_RESOURCES (mode enforce, on "
            "SIDECAR_PUBLIC_URL's origin), and make sure the ingress sends that path to the "
            "sidecar; a 404 often means the path differs from the app's route",
        )

    # -- 2. protected resource metadata -------------------------------------------------

    def resource_metadata(self) -> bool:
        where = self.challenge.get("resource_metadata") or self.origin + prm_path(self.url)
        r = self.http.get(where)
        if r.status_code != 200:
            return self.report.add(
                "protected resource metadata",
                False,
                f"{where} answered {r.status_code}",
                "list the URL in SIDECAR_RESOURCES so the sidecar serves its metadata",
            )
        self.prm = r.json()
        problems = []
        if self.prm.get("resource") != self.url:
            problems.append(f"resource is {self.prm.get('resource')!r}, not {self.url!r}")
        if not self.prm.get("authorization_servers"):
            problems.append("no authorization_servers")
        if "offline_access" in (self.prm.get("scopes_supported") or []):
            problems.append("scopes_supported lists offline_access")
        return self.report.add(
            "protected resource metadata",
            not problems,
            "; ".join(problems)
            or f"resource {self.prm['resource']}, server {self.prm['authorization_servers'][0]}",
            "SIDECAR_PUBLIC_URL must be the origin clients use (scheme, host, port), and the "
            "resource the exact URL they paste; a resource lists only its own scopes",
        )

    # -- 3. authorization server metadata -----------------------------------------------

    def server_metadata(self) -> bool:
        servers = self.prm.get("authorization_servers") or [f"{self.origin}/oauth"]
        issuer = str(servers[0])
        parts = urlsplit(issuer)
        base, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        tried = [
            f"{base}/.well-known/oauth-authorization-server{path}",
            f"{base}/.well-known/openid-configuration{path}",
            f"{base}{path}/.well-known/openid-configuration",
        ]
        documents, problems = [], []
        for where in tried:
            r = self.http.get(where)
            if r.status_code != 200:
                problems.append(f"{where} answered {r.status_code}")
                continue
            documents.append(r.json())
        issuers = {d.get("issuer") for d in documents}
        if documents and issuers != {issuer}:
            problems.append(f"issuer differs: {sorted(map(str, issuers))} for {issuer!r}")
        meta = documents[0] if documents else {}
        self.metadata = meta
        if meta and "S256" not in (meta.get("code_challenge_methods_supported") or []):
            problems.append("code_challenge_methods_supported lacks S256")
        if meta and meta.get("authorization_response_iss_parameter_supported") is not True:
            problems.append("authorization_response_iss_parameter_supported is not true")
        if meta and not (
            meta.get("registration_endpoint") or meta.get("client_id_metadata_document_supported")
        ):
            problems.append("neither registration nor client metadata documents")
        insecure = [
            f"{k}={v}"
            for k, v in meta.items()
            if (k.endswith("_endpoint") or k in ("issuer", "jwks_uri"))
            and isinstance(v, str)
            and v.startswith("http://")
            and not _is_loopback(v)
        ]
        if insecure:
            problems.append("plain http: " + ", ".join(insecure))
        return self.report.add(
            "authorization server metadata",
            not problems,
            "; ".join(problems) or f"issuer {issuer} at all three discovery URLs, S256, iss",
            "SIDECAR_ISSUER must be SIDECAR_PUBLIC_URL + /oauth byte for byte (no trailing "
            "slash, same host spelling); the ingress must route /.well-known/... to the sidecar; "
            "serve https (tls_certfile or an ingress) off loopback",
        )

    # -- 4. CORS ------------------------------------------------------------------------

    def browser_readable(self) -> bool:
        r = self.http.get(self.url, headers={"Origin": DOCTOR_ORIGIN})
        allowed = r.headers.get("access-control-allow-origin")
        exposed = r.headers.get("access-control-expose-headers", "").lower()
        pre = self.http.options(
            self.url,
            headers={
                "Origin": DOCTOR_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        pre_allowed = pre.headers.get("access-control-allow-origin")
        ok = allowed in ("*", DOCTOR_ORIGIN) and "www-authenticate" in exposed
        ok = ok and pre_allowed in ("*", DOCTOR_ORIGIN)
        return self.report.add(
            "challenge readable by a browser client",
            ok,
            f"Access-Control-Allow-Origin {allowed!r}, exposes {exposed or 'nothing'!r}; "
            f"preflight {pre.status_code} with {pre_allowed!r}",
            "set gateway_cors_origins (SIDECAR_GATEWAY_CORS_ORIGINS) to * or the clients' "
            "origins; an ingress must not strip Access-Control-* headers",
        )

    # -- 5. registration -----------------------------------------------------------------

    def registration(self) -> bool:
        endpoint = self.metadata.get("registration_endpoint")
        token_endpoint = self.metadata.get("token_endpoint")
        if not endpoint or not token_endpoint:
            return self.report.add(
                "registration", False, "no registration or token endpoint in the metadata",
                "fix the authorization server metadata first",
            )  # fmt: skip
        r = self.http.post(
            endpoint,
            json={
                "client_name": "sidecar doctor (throwaway)",
                "redirect_uris": [DOCTOR_REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        self.client_id = r.json().get("client_id") if r.status_code == 201 else None
        unknown = self.http.post(
            token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": "x.y",
                "client_id": "doctor-" + secrets.token_hex(6),
            },
        )
        error = (
            unknown.json().get("error")
            if unknown.headers.get("content-type", "").startswith("application/json")
            else None
        )
        ok = r.status_code == 201 and unknown.status_code == 401 and error == "invalid_client"
        return self.report.add(
            "registration",
            ok,
            f"register answered {r.status_code}; an unknown client at the token endpoint "
            f"{unknown.status_code} {error}",
            "registration must answer 201 (check registration_rate_limit and the store), and "
            "an unknown client 401 invalid_client: the signal MCP clients re-register on",
        )

    # -- 6. the login page ------------------------------------------------------------------

    def login_page(self) -> bool:
        endpoint = self.metadata.get("authorization_endpoint")
        if not endpoint or not getattr(self, "client_id", None):
            return self.report.add(
                "login page keeps its return address", False, "no client to try with",
                "fix registration first",
            )  # fmt: skip
        challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": DOCTOR_REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.prm.get("resource") == self.url:
            params["resource"] = self.url
        r = self.http.get(endpoint, params=params)
        location = r.headers.get("location", "")
        if location.startswith(DOCTOR_REDIRECT):
            error = parse_qs(urlsplit(location).query).get("error", ["?"])[0]
            return self.report.add(
                "login page keeps its return address", False,
                f"the authorization itself was refused: {error}",
                "fix the lines above first (resource, scopes)",
            )  # fmt: skip
        if r.status_code not in (302, 303) or "location" not in r.headers:
            return self.report.add(
                "login page keeps its return address", False,
                f"an anonymous authorization answered {r.status_code}, not a login redirect",
                "the sidecar must reach the app's session endpoint (SIDECAR_UPSTREAM_URL, "
                "SIDECAR_AUTH_BASE_PATH)",
            )  # fmt: skip
        login = httpx.URL(r.headers["location"])
        back = parse_qs(urlsplit(str(login)).query).get(self.return_param, [""])[0]
        page = self.http.get(str(login), follow_redirects=True)
        final = parse_qs(urlsplit(str(page.url)).query).get(self.return_param, [""])[0]
        ok = page.status_code == 200 and bool(back) and final == back
        return self.report.add(
            "login page keeps its return address",
            ok,
            f"{login.copy_with(query=None)} answered {page.status_code}; "
            f"{self.return_param} {'kept' if final == back and back else 'lost'}",
            "the login page (login_url) must answer and, after sign-in, send the person to its "
            f"{self.return_param} (login_return_param); a redirect that drops the query loses it",
        )

    # -- 7. the app behind it -------------------------------------------------------------------

    def app_side(self) -> bool:
        base = f"{self.origin}{self.auth_base_path}"
        session = self.http.get(f"{base}/get-session")
        token = self.http.get(f"{base}/convex/token")
        ok = session.status_code == 200 and token.status_code in (200, 401)
        return self.report.add(
            "Better Auth through the same origin",
            ok,
            f"get-session {session.status_code}, convex/token {token.status_code}",
            "the app's Better Auth must answer at SIDECAR_AUTH_BASE_PATH through the sidecar "
            "(convex() plugin installed; trustedOrigins must include the public origin)",
        )

    # -- 8. TLS and the clock ---------------------------------------------------------------------

    def tls_and_clock(self) -> bool:
        r = self.http.get(f"{self.origin}/oauth/healthz")
        problems, seen = [], []
        date = r.headers.get("date")
        if date:
            server = email.utils.parsedate_to_datetime(date)
            skew = abs((datetime.datetime.now(datetime.UTC) - server).total_seconds())
            seen.append(f"clock {skew:.0f} s from the server's")
            if skew > CLOCK_SKEW:
                problems.append(f"the clocks differ by {skew:.0f} s")
        if urlsplit(self.origin).scheme == "https":
            names, days = self.certificate()
            seen.append(f"certificate for {', '.join(names)}, {days} days left")
            host = urlsplit(self.origin).hostname or ""
            if days < CERT_DAYS_WARNING:
                problems.append(f"the certificate expires in {days} days")
            if not any(n == host or (n.startswith("*.") and host.endswith(n[1:])) for n in names):
                problems.append(f"the certificate does not name {host}")
        else:
            seen.append("plain http" + (" on loopback" if _is_loopback(self.origin) else ""))
            if not _is_loopback(self.origin):
                problems.append("plain http off loopback")
        return self.report.add(
            "TLS and clock",
            not problems,
            "; ".join(problems or seen),
            "renew the certificate (a replaced tls_certfile is picked up without a restart), "
            "run NTP on the host; MCP clients need https",
        )

    def certificate(self) -> tuple[list[str], int]:
        parts = urlsplit(self.origin)
        context = (
            self.verify if isinstance(self.verify, ssl.SSLContext) else ssl.create_default_context()
        )
        with (
            socket.create_connection((parts.hostname, parts.port or 443), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            cert: dict[str, Any] = dict(tls.getpeercert() or {})
        names = [
            str(value)
            for kind, value in cert.get("subjectAltName", ())
            if kind in ("DNS", "IP Address")
        ]
        expires = datetime.datetime.fromtimestamp(
            ssl.cert_time_to_seconds(str(cert["notAfter"])), datetime.UTC
        )
        return names, (expires - datetime.datetime.now(datetime.UTC)).days


def diagnose(url: str, **options: Any) -> Report:
    url = url.strip()
    try:
        canonical_url(url)
    except InvalidURL as exc:
        report = Report(url)
        report.add("MCP URL", False, str(exc), "give the MCP URL clients use, http(s)://host/path")
        return report
    return Doctor(url, **options).run()
