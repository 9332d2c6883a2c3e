"""What Convex needs to accept the sidecar's tokens: customJwt provider
entries for ``convex/auth.config.ts``.

Convex's customJwt (get-convex/convex-backend, crates/authentication) needs
``kid`` matching a key of ``jwks``, ``alg`` equal to ``algorithm``, ``iss``
equal to ``issuer`` (trailing slashes aside), ``aud`` containing
``applicationID``, and ``sub iss iat exp``. The sidecar's tokens carry its own
issuer and the resource as audience, so they pass this entry and never the
app's existing ``convex`` one.
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
    resources = settings.resources or (settings.default_resource,)
    return [
        {
            "type": "customJwt",
            "issuer": settings.issuer,
            "applicationID": resource.url,
            "algorithm": keyset.signing.alg,
            "jwks": jwks_data_uri(keyset),
        }
        for resource in resources
    ]


def auth_config_snippet(settings: Settings, keyset: KeySet) -> str:
    entries = ",\n".join(
        "  " + json.dumps(p, indent=2).replace("\n", "\n  ") for p in providers(settings, keyset)
    )
    return (
        "// Add to the providers of convex/auth.config.ts, next to the existing\n"
        "// convex entry, so Convex functions accept the sidecar's OAuth tokens.\n"
        f"{entries},\n"
    )
