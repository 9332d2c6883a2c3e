"""The token the gateway mints for Convex on every verified MCP request.

The MCP client's own access token never goes past the gateway (MCP
authorization, security considerations: servers MUST NOT pass it through).
Instead the app receives a short-lived JWT it can hand to Convex: signed with
the sidecar's key (its ``kid`` is in the sidecar's JWKS, as Convex's
customJwt needs), ``iss`` the sidecar's issuer, ``aud`` ``convex_audience``
(never ``convex``, the app's own sessions), ``sub`` the Better Auth user id
(the same subject Convex sees for the person's own session), and
``client_id``, ``scope``, ``resource``. It lives at most ``convex_token_ttl``
seconds and never past the access token, so a revocation reaches Convex as
soon as the gateway refuses the access token and the last minted token ends.

No ``sessionId`` is carried: an MCP grant outlives the browser session that
created it, so Convex functions find the person with
``authComponent.getAnyUserById(ctx, identity.subject)`` after checking
``identity.issuer`` (README, "Convex functions as the person").
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sidecar.config import Settings
from sidecar.expiring import ExpiringCache
from sidecar.keys import KeySet

CACHE_SIZE = 10_000
CONVEX_TOKEN_TYPE = "JWT"  # not at+jwt: it is never an access token of ours


class ConvexTokens:
    def __init__(self, settings: Settings, keys: KeySet) -> None:
        self.settings = settings
        self.keys = keys
        self.ttl = settings.convex_token_ttl
        # access token jti -> (the minted token, its expiry)
        self._minted: ExpiringCache[str, str] = ExpiringCache(CACHE_SIZE)

    def for_access_token(self, claims: dict[str, Any]) -> str:
        """The Convex token for a verified access token, reused while more
        than half its life is left (signing costs about 0.4 ms; a reuse, a
        dictionary look-up)."""
        now = time.time()
        cached = self._minted.get(claims["jti"], now)
        if cached is not None:
            return cached
        token, exp = self.mint(claims, now)
        # Reused until half its life is gone.
        self._minted.put(claims["jti"], token, exp - self.ttl / 2)
        return token

    def mint(self, claims: dict[str, Any], now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        exp = min(int(now) + self.ttl, int(claims["exp"]))
        token = self.keys.sign(
            {
                "iss": self.settings.issuer,
                "aud": self.settings.convex_audience,
                "sub": claims["sub"],
                "client_id": claims["client_id"],
                "scope": claims.get("scope", ""),
                "resource": claims["aud"],
                "jti": uuid.uuid4().hex,
                "iat": int(now),
                "exp": exp,
            },
            typ=CONVEX_TOKEN_TYPE,
        )
        return token, float(exp)
