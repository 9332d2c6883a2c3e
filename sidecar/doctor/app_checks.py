"""The lines about the app behind the sidecar: Better Auth answers at the
sidecar's auth_base_path, accepts sign-in from the sidecar's origin, and
issues session JWTs the sidecar would verify; then TLS and the clock."""

from __future__ import annotations

import datetime
import email.utils
import secrets
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from sidecar.doctor.base import Context, is_loopback_url, json_body

CLOCK_SKEW = 60  # seconds
CERT_DAYS_WARNING = 14
ORIGIN_REFUSALS = ("INVALID_ORIGIN", "MISSING_OR_NULL_ORIGIN")
SESSION_FIX = (
    "session_issuer (SIDECAR_SESSION_ISSUER, or CONVEX_SITE_URL) must be the app's "
    "CONVEX_SITE_URL exactly, the iss of its session JWTs, and the JWKS the sidecar is given "
    "the app's own (the same JWKS value): otherwise every signed-in person is sent back to "
    "the login page"
)


class AppChecks(Context):
    @property
    def auth_base(self) -> str:
        return f"{self.origin}{self.auth_base_path}"

    # -- Better Auth answers at auth_base_path ------------------------------------------

    def better_auth(self) -> bool:
        session = self.get(f"{self.auth_base}/get-session")
        token = self.get(f"{self.auth_base}/convex/token")
        body = json_body(session) if session.status_code == 200 else "not JSON"
        ok = (body is None or isinstance(body, dict)) and session.status_code == 200
        ok = ok and token.status_code in (200, 401)
        return self.report.add(
            "Better Auth at auth_base_path",
            ok,
            f"{self.auth_base_path}/get-session {session.status_code}"
            + (", not JSON" if session.status_code == 200 and body == "not JSON" else "")
            + f", convex/token {token.status_code}",
            "auth_base_path (SIDECAR_AUTH_BASE_PATH, and the doctor's --auth-base-path) must "
            "be Better Auth's basePath, answered through the sidecar (convex() plugin installed)",
        )

    # -- sign-in from the sidecar's origin -------------------------------------------------

    def sign_in_origin(self) -> bool:
        """A made-up account, as a browser on the sidecar's origin signs in:
        Better Auth must refuse the credentials, never the origin."""
        origin = self.public_origin
        r = self.post(
            f"{self.auth_base}/sign-in/email",
            json={
                "email": f"doctor-{secrets.token_hex(8)}@doctor.invalid",
                "password": secrets.token_urlsafe(18),
            },
            # A browser on the app's site carries its cookies, and Better Auth
            # checks the Origin of a cookie-carrying post in every version
            # (older ones only then): a made-up cookie makes it check here too.
            headers={"Origin": origin, "Cookie": "better-auth.session_token=doctor"},
        )
        body = json_body(r)
        code = str(body.get("code")) if isinstance(body, dict) else None
        fix = (
            f"add the sidecar's public origin {origin} to Better Auth's trustedOrigins (the "
            "app's betterAuth({ trustedOrigins }))"
        )
        if code in ORIGIN_REFUSALS or r.status_code == 403:
            seen = f"{r.status_code} {code}: Better Auth refuses sign-in from {origin}"
        elif r.status_code == 404:
            seen = f"{self.auth_base_path}/sign-in/email answered 404"
            fix = "auth_base_path (SIDECAR_AUTH_BASE_PATH) must be Better Auth's basePath"
        elif r.status_code == 429:
            seen = "429: Better Auth rate-limited the attempt; nothing proved"
            fix = "run the doctor again in a minute"
        elif r.status_code == 401:
            return self.report.add(
                "sign-in accepted from the sidecar's origin",
                True,
                f"a made-up account from {origin}: {r.status_code} {code} (wrong credentials, "
                "not the origin)",
            )
        else:
            seen = f"{r.status_code} {code}"
            fix = "Better Auth's email sign-in must answer through the sidecar; " + fix
        return self.report.add("sign-in accepted from the sidecar's origin", False, seen, fix)

    # -- the session JWT would verify -------------------------------------------------------

    def session_jwt(self) -> bool:
        name = "session JWT verifies at the sidecar"
        config = self.get(f"{self.auth_base}/convex/.well-known/openid-configuration")
        keys = self.get(f"{self.auth_base}/convex/jwks")
        document, jwks = json_body(config), json_body(keys)
        if not isinstance(document, dict) or not isinstance(jwks, dict):
            return self.report.add(
                name, False,
                f"convex/.well-known/openid-configuration {config.status_code}, "
                f"convex/jwks {keys.status_code}",
                "install the convex() plugin in Better Auth, under auth_base_path "
                "(SIDECAR_AUTH_BASE_PATH)",
            )  # fmt: skip
        issuer = str(document.get("issuer"))
        kids = {str(k.get("kid")) for k in jwks.get("keys") or [] if isinstance(k, dict)}
        problems, seen = self._session_problems(issuer, kids)
        return self.report.add(name, not problems, "; ".join(problems or seen), SESSION_FIX)

    def _session_problems(self, issuer: str, kids: set[str]) -> tuple[list[str], list[str]]:
        expected, known = self.options.session_issuer, self.options.session_kids
        problems: list[str] = []
        seen = [f"the app's session issuer {issuer}, keys {', '.join(sorted(kids)) or 'none'}"]
        if not kids:
            problems.append("the app publishes no keys at convex/jwks")
        if expected is None:
            seen.append(
                "not compared with the sidecar's session_issuer: give --config or "
                "--session-issuer to compare"
            )
        elif issuer != expected.rstrip("/"):
            problems.append(
                f"the app's session JWTs are issued by {issuer!r}, the sidecar expects "
                f"{expected.rstrip('/')!r}"
            )
        else:
            seen.append(f"the sidecar expects {issuer}")
        if known is not None:
            unknown = sorted(kids - known)
            if unknown or not kids & known:
                problems.append(
                    f"the app signs with {', '.join(unknown) or 'no key'} the sidecar's JWKS "
                    f"lacks (it has {', '.join(sorted(known)) or 'none'})"
                )
            else:
                seen.append("the sidecar's JWKS holds every key")
        return problems, seen

    # -- TLS and the clock ----------------------------------------------------------------

    def tls_and_clock(self) -> bool:
        r = self.get(f"{self.origin}/oauth/healthz")
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
            seen.append("plain http" + (" on loopback" if is_loopback_url(self.origin) else ""))
            if not is_loopback_url(self.origin):
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
