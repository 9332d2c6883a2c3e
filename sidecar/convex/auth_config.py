"""What Convex needs to accept the tokens the sidecar mints for it: the
customJwt provider entry for ``convex/auth.config.ts``.

Convex's customJwt (get-convex/convex-backend, crates/authentication) needs
``kid`` matching a key of ``jwks``, ``alg`` equal to ``algorithm``, ``iss``
equal to ``issuer`` (trailing slashes aside), ``aud`` containing
``applicationID``, and ``sub iss iat exp``. The Convex token carries the
sidecar's issuer and ``convex_audience``, so it passes this entry and never
the app's existing ``convex`` one; an MCP client's access token (its audience
is the resource) passes neither. With ``forward_access_token`` (the
passthrough opt-in) the resources' entries are printed too.
"""

from __future__ import annotations

import base64
import json

from sidecar.config import Settings
from sidecar.keys import KeySet


def jwks_data_uri(keyset: KeySet) -> str:
    document = json.dumps(keyset.jwks(), separators=(",", ":"))
    return "data:text/plain;charset=utf-8;base64," + base64.b64encode(document.encode()).decode()


def providers(settings: Settings, keyset: KeySet) -> list[dict[str, str]]:
    audiences = [settings.convex_audience]
    if settings.forward_access_token:
        audiences += [r.url for r in settings.known_resources if r.mode == "enforce"]
    return [
        {
            "type": "customJwt",
            "issuer": settings.issuer,
            "applicationID": audience,
            "algorithm": keyset.signing.alg,
            "jwks": jwks_data_uri(keyset),
        }
        for audience in audiences
    ]


def auth_config_snippet(settings: Settings, keyset: KeySet) -> str:
    entries = ",\n".join(
        "  " + json.dumps(p, indent=2).replace("\n", "\n  ") for p in providers(settings, keyset)
    )
    note = (
        "// The first accepts the Convex token the gateway sends as\n"
        f"// {settings.identity_header_prefix}Convex-Token; the others accept MCP clients' own\n"
        "// access tokens (forward_access_token = true, token passthrough).\n"
        if settings.forward_access_token
        else "// It accepts the Convex token the gateway sends with each verified MCP\n"
        f"// request as {settings.identity_header_prefix}Convex-Token (never the client's own).\n"
    )
    return (
        "// Add to the providers of convex/auth.config.ts, next to the existing\n"
        "// convex entry, so Convex functions run as the person behind an MCP call.\n"
        f"{note}{entries},\n"
    )
