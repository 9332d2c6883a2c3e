"""The provider entry `sidecar convex-auth-config` prints accepts the
sidecar's tokens under Convex's customJwt rules, and the app's existing
`convex` provider refuses them; a Convex session JWT is refused wherever the
sidecar expects its own tokens."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest

from sidecar.config import load_settings
from sidecar.convex import providers
from sidecar.keys import load_keyset
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.grants import Grants
from sidecar.oauth.tokens import Tokens
from sidecar.store import open_store
from tools import fixtures

CONVEX_SKEW = 5


def convex_custom_jwt_accepts(provider: dict[str, str], token: str, now: float) -> bool:
    """Convex's customJwt checks, as its backend applies them (REFERENCES.md):
    kid must match a key of jwks, alg must equal the configured algorithm
    (typ is not checked), iss equal but for trailing slashes, aud contains
    applicationID, sub/iss/iat/exp present, 5 s of clock skew."""
    header = jwt.get_unverified_header(token)
    document = json.loads(base64.b64decode(provider["jwks"].split(",", 1)[1]))
    key = next((k for k in document["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None or header.get("alg") != provider["algorithm"]:
        return False
    try:
        claims = jwt.decode(
            token,
            jwt.PyJWK(key).key,
            algorithms=[provider["algorithm"]],
            options={
                "verify_aud": False,
                "verify_iss": False,
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        return False
    if not {"sub", "iss", "iat", "exp"} <= set(claims):
        return False
    if claims["iss"].rstrip("/") != provider["issuer"].rstrip("/"):
        return False
    aud = claims.get("aud")
    if provider["applicationID"] not in (aud if isinstance(aud, list) else [aud]):
        return False
    return claims["exp"] + CONVEX_SKEW >= now


def settings_and_keys():  # type: ignore[no-untyped-def]
    settings = load_settings(
        env={
            "JWKS": fixtures.text("static-jwks.json"),
            "BETTER_AUTH_SECRET": fixtures.SECRET,
            "CONVEX_SITE_URL": fixtures.SITE_URL,
            "SIDECAR_PUBLIC_URL": "https://app.example.com",
            "SIDECAR_RESOURCES": "/api/mcp",
        }
    )
    return settings, load_keyset(settings)


def existing_convex_provider() -> dict[str, Any]:
    """What getAuthConfigProvider({jwks}) gives the app today."""
    public = fixtures.load("convex-jwks.json")
    data = base64.b64encode(json.dumps(public).encode()).decode()
    return {
        "type": "customJwt",
        "issuer": fixtures.SITE_URL,
        "applicationID": "convex",
        "algorithm": "RS256",
        "jwks": f"data:text/plain;charset=utf-8;base64,{data}",
    }


def sidecar_token(settings, keyset) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    return keyset.sign(
        {
            "iss": settings.issuer,
            "sub": "user-1",
            "aud": settings.resources[0].url,
            "client_id": "c",
            "scope": "openid",
            "jti": "j",
            "iat": now,
            "exp": now + 600,
        },
        typ="at+jwt",
    )


def convex_token(settings, keyset) -> str:  # type: ignore[no-untyped-def]
    from sidecar.convex import ConvexTokens

    access = jwt.decode(sidecar_token(settings, keyset), options={"verify_signature": False})
    return ConvexTokens(settings, keyset).for_access_token(access)


def test_the_convex_token_passes_the_printed_provider_and_fails_the_convex_one() -> None:
    settings, keyset = settings_and_keys()
    token = convex_token(settings, keyset)
    [printed] = providers(settings, keyset)
    assert printed["issuer"] == "https://app.example.com/oauth"
    assert printed["applicationID"] == "convex-mcp"
    assert convex_custom_jwt_accepts(printed, token, time.time())
    assert not convex_custom_jwt_accepts(existing_convex_provider(), token, time.time())


def test_an_mcp_access_token_passes_no_provider_unless_passthrough_is_opted_into() -> None:
    settings, keyset = settings_and_keys()
    access = sidecar_token(settings, keyset)
    [printed] = providers(settings, keyset)
    assert not convex_custom_jwt_accepts(printed, access, time.time())
    assert not convex_custom_jwt_accepts(existing_convex_provider(), access, time.time())
    import dataclasses

    passthrough = dataclasses.replace(settings, forward_access_token=True)
    entries = providers(passthrough, keyset)
    assert [p["applicationID"] for p in entries] == [
        "convex-mcp",
        "https://app.example.com/api/mcp",
    ]
    assert convex_custom_jwt_accepts(entries[1], access, time.time())


def test_the_convex_token_is_short_lived_and_never_outlives_the_access_token() -> None:
    from sidecar.convex import ConvexTokens

    settings, keyset = settings_and_keys()
    tokens = ConvexTokens(settings, keyset)
    now = int(time.time())
    base = {
        "sub": "u",
        "client_id": "c",
        "scope": "openid",
        "aud": "https://app.example.com/api/mcp",
    }
    long_lived = jwt.decode(
        tokens.for_access_token({**base, "jti": "a", "exp": now + 3600}),
        options={"verify_signature": False},
    )
    assert long_lived["exp"] - long_lived["iat"] == 120
    assert long_lived["aud"] == "convex-mcp"
    assert long_lived["sub"] == "u"
    assert long_lived["resource"] == base["aud"]
    assert "sessionId" not in long_lived
    ending = jwt.decode(
        tokens.for_access_token({**base, "jti": "b", "exp": now + 30}),
        options={"verify_signature": False},
    )
    assert ending["exp"] == now + 30
    # Reused for the same access token while most of its life is left.
    again = {**base, "jti": "a", "exp": now + 3600}
    assert tokens.for_access_token(again) == tokens.for_access_token(again)


def test_convex_audience_may_never_be_the_apps_own() -> None:
    from sidecar.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_settings(env={"SIDECAR_CONVEX_AUDIENCE": "convex"})
    assert err.value.key == "convex_audience"


def test_a_convex_session_jwt_passes_only_the_convex_provider() -> None:
    settings, keyset = settings_and_keys()
    session = fixtures.load("convex-token.json")["token"]
    iat = jwt.decode(session, options={"verify_signature": False})["iat"]
    [printed] = providers(settings, keyset)
    assert convex_custom_jwt_accepts(existing_convex_provider(), session, iat + 1)
    assert not convex_custom_jwt_accepts(printed, session, iat + 1)


def test_a_convex_session_jwt_is_refused_as_an_access_token() -> None:
    settings, keyset = settings_and_keys()
    grants = Tokens(Grants(settings, open_store("memory://")), keyset)
    session = fixtures.load("convex-token.json")["token"]
    with pytest.raises(InvalidToken):
        grants.decode_access_token(session)


def test_an_access_token_for_another_audience_is_refused() -> None:
    settings, keyset = settings_and_keys()
    grants = Tokens(Grants(settings, open_store("memory://")), keyset)
    token = sidecar_token(settings, keyset)
    assert grants.decode_access_token(token, "https://app.example.com/api/mcp")["sub"] == "user-1"
    with pytest.raises(InvalidToken):
        grants.decode_access_token(token, "https://app.example.com/other")


def test_the_command_prints_the_provider_entry() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "convex-auth-config"],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "JWKS": fixtures.text("static-jwks.json"),
            "BETTER_AUTH_SECRET": fixtures.SECRET,
            "CONVEX_SITE_URL": fixtures.SITE_URL,
            "SIDECAR_PUBLIC_URL": "https://app.example.com",
            "SIDECAR_RESOURCES": "/api/mcp",
        },
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert '"type": "customJwt"' in result.stdout
    assert '"applicationID": "convex-mcp"' in result.stdout
    assert "privateKey" not in result.stdout
