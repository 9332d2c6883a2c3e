"""The checklist ``sidecar doctor`` prints, and what a request that never got
an answer (nothing listening, a name that does not resolve, TLS, a timeout)
means for the person running it."""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import asdict, dataclass, field

import httpx


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
        return bool(self.checks) and all(c.ok for c in self.checks)

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


class Unreached(Exception):
    """A request not sent: its origin already failed to answer (``first``
    names the line that found out)."""

    def __init__(self, origin: str, first: str) -> None:
        super().__init__(origin)
        self.origin = origin
        self.first = first


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def network_failure(exc: Exception, origin: str) -> tuple[str, str]:
    """What was seen and its fix, for a request that got no HTTP answer."""
    causes = _causes(exc)
    host = httpx.URL(origin).host
    text = " ".join(str(c) for c in causes).lower()
    if isinstance(exc, httpx.TimeoutException):
        return (
            f"no answer from {origin} in time ({type(exc).__name__})",
            "the host is up but does not answer: check the firewall, the ingress and that the "
            "sidecar runs (sidecar serve); a slow app behind it shows here too",
        )
    if any(isinstance(c, socket.gaierror) for c in causes) or "name or service" in text:
        return (
            f"the name {host} does not resolve",
            f"check the host name in the URL and its DNS record ({host} must resolve from here)",
        )
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes) or "certificate" in text:
        return (
            f"TLS with {origin} failed: the certificate is not trusted ({causes[-1]})",
            "serve a certificate for this host from a public CA (tls_certfile or the ingress), "
            "or give --ca-file for a private CA",
        )
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return (
            f"TLS with {origin} failed ({causes[-1]})",
            "check that the port serves https (or use http:// for a plain http port)",
        )
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in text:
        return (
            f"nothing listens at {origin} (connection refused)",
            "start the sidecar (sidecar serve) or fix the port in the URL; behind an ingress, "
            "check that it forwards to the sidecar's SIDECAR_PORT",
        )
    return (
        f"{origin} could not be reached: {exc or type(exc).__name__}",
        "check that the URL is reachable from here (DNS, firewall, proxy)",
    )
