"""The lines a client meets first: the MCP URL's challenge, the metadata it
leads to, CORS, registration and the login page."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlsplit

from sidecar.doctor.base import Context, is_loopback_url, json_body, origin_of
from sidecar.routes import prm_path

DOCTOR_ORIGIN = "https://doctor.invalid"  # a page on another origin, as a browser client is
# A redirect URI no server may register (RFC 6749 section 3.1.2: no fragment):
# the registration endpoint proves it parses and answers without storing a client.
UNREGISTRABLE = "http://127.0.0.1:9/doctor#a-fragment-is-never-registered"
ACCOUNT_PATH = "/oauth/account"  # the sidecar's page that sends an anonymous person to login
SESSION_COOKIE = "better-auth.session_token=doctor-made-up"  # makes the sidecar ask the app


def _challenge_params(header: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


class OAuthChecks(Context):
    # -- the MCP URL ------------------------------------------------------------

    def mcp_challenge(self) -> bool:
        r = self.post(
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
        return self.report.add(
            "MCP URL challenge",
            False,
            f"{r.status_code} without a Bearer resource_metadata challenge",
            "the endpoint is not guarded: add its path to SIDECAR_RESOURCES (mode enforce, on "
            "SIDECAR_PUBLIC_URL's origin), and make sure the ingress sends that path to the "
            "sidecar; a 404 often means the path differs from the app's route",
        )

    # -- protected resource metadata -------------------------------------------------

    def resource_metadata(self) -> bool:
        where = self.challenge.get("resource_metadata") or self.origin + prm_path(self.url)
        r = self.get(where)
        prm = self.document(r)
        if r.status_code != 200 or not prm:
            return self.report.add(
                "protected resource metadata",
                False,
                f"{where} answered {r.status_code}" + ("" if prm else ", not a JSON document"),
                "list the URL in SIDECAR_RESOURCES so the sidecar serves its metadata",
            )
        self.prm = prm
        problems = []
        if prm.get("resource") != self.url:
            problems.append(f"resource is {prm.get('resource')!r}, not {self.url!r}")
        servers = prm.get("authorization_servers")
        if not servers or not isinstance(servers, list):
            problems.append("no authorization_servers")
            servers = ["none"]
        if "offline_access" in (prm.get("scopes_supported") or []):
            problems.append("scopes_supported lists offline_access")
        return self.report.add(
            "protected resource metadata",
            not problems,
            "; ".join(problems) or f"resource {prm['resource']}, server {servers[0]}",
            "SIDECAR_PUBLIC_URL must be the origin clients use (scheme, host, port), and the "
            "resource the exact URL they paste; a resource lists only its own scopes",
        )

    # -- the issuer is where the sidecar answers --------------------------------------

    def issuer_origin(self) -> bool:
        servers = self.prm.get("authorization_servers") or []
        named = {str(servers[0])} if servers else set()
        if self.options.issuer:
            named.add(self.options.issuer)
        if not named:
            return self.report.add(
                "issuer on the sidecar's origin", False,
                "not run: no issuer in the protected resource metadata",
                "see 'protected resource metadata' above",
            )  # fmt: skip
        elsewhere = sorted(i for i in named if origin_of(i) != self.origin)
        return self.report.add(
            "issuer on the sidecar's origin",
            not elsewhere,
            f"issuer {', '.join(elsewhere)} is not on {self.origin}, where the MCP URL is"
            if elsewhere
            else f"issuer {', '.join(sorted(named))} on {self.origin}",
            "issuer (SIDECAR_ISSUER) must be the sidecar's own origin + /oauth, the "
            "SIDECAR_PUBLIC_URL clients use (leave it unset for that default): the sidecar "
            "answers OAuth only there",
        )

    # -- authorization server metadata -----------------------------------------------

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
            r = self.get(where)
            body = json_body(r)
            if r.status_code != 200 or not isinstance(body, dict):
                problems.append(f"{where} answered {r.status_code}")
                continue
            documents.append(body)
        issuers = {d.get("issuer") for d in documents}
        if documents and issuers != {issuer}:
            problems.append(f"issuer differs: {sorted(map(str, issuers))} for {issuer!r}")
        meta = documents[0] if documents else {}
        self.metadata = meta
        problems += self._metadata_problems(meta)
        return self.report.add(
            "authorization server metadata",
            not problems,
            "; ".join(problems) or f"issuer {issuer} at all three discovery URLs, S256, iss",
            "SIDECAR_ISSUER must be SIDECAR_PUBLIC_URL + /oauth byte for byte (no trailing "
            "slash, same host spelling); the ingress must route /.well-known/... to the sidecar; "
            "serve https (tls_certfile or an ingress) off loopback",
        )

    @staticmethod
    def _metadata_problems(meta: dict[str, object]) -> list[str]:
        if not meta:
            return []
        problems = []
        if "S256" not in (meta.get("code_challenge_methods_supported") or []):  # type: ignore[operator]
            problems.append("code_challenge_methods_supported lacks S256")
        if meta.get("authorization_response_iss_parameter_supported") is not True:
            problems.append("authorization_response_iss_parameter_supported is not true")
        if not (
            meta.get("registration_endpoint") or meta.get("client_id_metadata_document_supported")
        ):
            problems.append("neither registration nor client metadata documents")
        insecure = [
            f"{k}={v}"
            for k, v in meta.items()
            if (k.endswith("_endpoint") or k in ("issuer", "jwks_uri"))
            and isinstance(v, str)
            and v.startswith("http://")
            and not is_loopback_url(v)
        ]
        if insecure:
            problems.append("plain http: " + ", ".join(insecure))
        return problems

    # -- CORS ------------------------------------------------------------------------

    def browser_readable(self) -> bool:
        r = self.get(self.url, headers={"Origin": DOCTOR_ORIGIN})
        allowed = r.headers.get("access-control-allow-origin")
        exposed = r.headers.get("access-control-expose-headers", "").lower()
        pre = self.request(
            "OPTIONS",
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

    # -- registration -----------------------------------------------------------------

    def registration(self) -> bool:
        """Stores nothing: a body no server may accept must get RFC 7591's
        400 error (the endpoint is routed, parses, answers JSON), and an
        unknown client 401 invalid_client at the token endpoint."""
        endpoint = self.metadata.get("registration_endpoint")
        token_endpoint = self.metadata.get("token_endpoint")
        if not endpoint or not token_endpoint:
            return self.report.add(
                "registration", False,
                "not run: no registration or token endpoint in the metadata",
                "see 'authorization server metadata' above",
            )  # fmt: skip
        r = self.post(
            str(endpoint),
            json={
                "client_name": "sidecar doctor",
                "redirect_uris": [UNREGISTRABLE],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        refused = (json_body(r) or {}).get("error") if r.status_code == 400 else None
        unknown = self.post(
            str(token_endpoint),
            data={
                "grant_type": "refresh_token",
                "refresh_token": "x.y",
                "client_id": "doctor-" + secrets.token_hex(6),
            },
        )
        error = (json_body(unknown) or {}).get("error")
        ok = refused in ("invalid_redirect_uri", "invalid_client_metadata")
        ok = ok and unknown.status_code == 401 and error == "invalid_client"
        stored = " (and stored a client with a fragment in its redirect URI)" * (
            r.status_code == 201
        )
        return self.report.add(
            "registration",
            ok,
            f"an unregistrable client answered {r.status_code} {refused or ''}{stored}; "
            f"an unknown client at the token endpoint {unknown.status_code} {error}",
            "registration must answer RFC 7591 errors as JSON (400 invalid_redirect_uri; a 429 "
            "is registration_rate_limit), and an unknown client 401 invalid_client: the signal "
            "MCP clients re-register on",
        )

    # -- the login page ------------------------------------------------------------------

    def login_page(self) -> bool:
        """The sidecar's account page sends a person it does not know to the
        login page, as an authorization does, with no client registered. A
        made-up session cookie makes it ask the app who that is."""
        name = "login page keeps its return address"
        r = self.get(f"{self.origin}{ACCOUNT_PATH}", headers={"Cookie": SESSION_COOKIE})
        if r.status_code in (502, 503, 504):
            return self.report.add(
                name, False,
                f"{ACCOUNT_PATH} answered {r.status_code}: the sidecar could not ask the app "
                "who the person is (people see \"Sign-in is unavailable\")",
                "auth_base_path (SIDECAR_AUTH_BASE_PATH) must be Better Auth's basePath and "
                "SIDECAR_UPSTREAM_URL the app, reachable from the sidecar",
            )  # fmt: skip
        if r.status_code not in (302, 303) or "location" not in r.headers:
            return self.report.add(
                name, False, f"{ACCOUNT_PATH} answered {r.status_code}, not a login redirect",
                "the ingress must send /oauth/... to the sidecar",
            )  # fmt: skip
        login = r.headers["location"]
        back = parse_qs(urlsplit(login).query).get(self.return_param, [""])[0]
        page = self.get(login, follow_redirects=True)
        final = parse_qs(urlsplit(str(page.url)).query).get(self.return_param, [""])[0]
        ok = page.status_code == 200 and bool(back) and final == back
        return self.report.add(
            name,
            ok,
            f"{login.split('?')[0]} answered {page.status_code}; "
            f"{self.return_param} {'kept' if final == back and back else 'lost'}",
            "the login page (login_url) must answer and, after sign-in, send the person to its "
            f"{self.return_param} (login_return_param); a redirect that drops the query loses it",
        )
