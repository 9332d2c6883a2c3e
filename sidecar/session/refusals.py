"""Why the app's session JWTs are refused, told to the operator.

A session JWT that never verifies (a wrong ``session_issuer``, a JWKS that is
not the deployment's, clocks apart) sends every signed-in person back to the
login page, forever. So each refusal is a warning naming why and the setting
to check, at most once a minute per reason in each process (the count of
those left unsaid goes with the next one); every refusal is a debug line.
The token itself is never written.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import structlog

from sidecar.config import env_names

log = structlog.get_logger("sidecar.session")

WARN_EVERY = 60.0  # seconds between two warnings for one reason


def setting(key: str) -> str:
    return f"{key} ({' or '.join(env_names(key))})"


ISSUER = setting("session_issuer")
JWKS = setting("jwks")
# What a refusal's reason means the operator should look at.
CHECK = {
    "issuer": ISSUER,
    "audience": f"the app's convex() plugin and {setting('auth_base_path')}",
    "key": JWKS,
    "signature": JWKS,
    "expired": "the clocks of the app's host and the sidecar's (NTP)",
    "claims": JWKS,
}


def shown(value: Any, limit: int = 120) -> str:
    """A value from the token as a log field may show it: short, quoted."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Refusals:
    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every = every
        self.last: dict[str, float] = {}  # reason -> when last warned
        self.unsaid: dict[str, int] = {}  # reason -> refusals since

    def refused(self, reason: str, detail: str, *, warn: bool = True) -> None:
        log.debug("session JWT refused", why=detail, reason=reason)
        if not warn:
            return
        now = time.monotonic()
        last = self.last.get(reason)
        if last is not None and now - last < self.every:
            self.unsaid[reason] = self.unsaid.get(reason, 0) + 1
            return
        self.last[reason] = now
        log.warning(
            "session JWT refused: signed-in people are sent back to sign in",
            why=detail,
            reason=reason,
            check=CHECK.get(reason, JWKS),
            refused_since_last_warning=self.unsaid.pop(reason, 0),
        )

    def refused_by(self, exc: jwt.PyJWTError, token: str, issuer: str, *, fresh: bool) -> None:
        """``exc`` as a reason and a detail; the token only for its ``iss``
        and ``aud`` (whose signature verified when those are the reason)."""
        if isinstance(exc, jwt.InvalidIssuerError):
            got = unverified_claims(token).get("iss")
            self.refused("issuer", f"wrong issuer: expected {shown(issuer)}, got {shown(got)}")
        elif isinstance(exc, jwt.InvalidAudienceError):
            got = unverified_claims(token).get("aud")
            self.refused("audience", f"wrong audience: expected 'convex', got {shown(got)}")
        elif isinstance(exc, jwt.ExpiredSignatureError):
            # A cookie past its time is routine (the app mints another); one
            # the app has just minted already expired is clocks apart.
            self.refused("expired", "expired", warn=fresh)
        elif isinstance(exc, jwt.ImmatureSignatureError):
            self.refused("expired", "issued in the future (iat or nbf)")
        elif isinstance(exc, jwt.MissingRequiredClaimError):
            self.refused("claims", f"the claim {shown(exc.claim)} is missing")
        elif isinstance(exc, jwt.InvalidSignatureError | jwt.InvalidKeyError):
            self.refused("signature", "the signature does not verify against JWKS")
        else:  # not a JWT at all: a client's garbage, not a setting
            self.refused("malformed", type(exc).__name__, warn=False)


def unverified_claims(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}
