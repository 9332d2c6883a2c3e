"""Each reason the session bridge refuses the app's session JWT is a warning
naming why and the setting to check, at most once a minute per reason; the
token is never written."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from sidecar.config import load_settings
from sidecar.proxy.upstream import UpstreamClient
from sidecar.session.bridge import SessionBridge

ISSUER = "https://app.example"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def bridge() -> SessionBridge:
    settings = load_settings(
        env={"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:9", "SIDECAR_SESSION_ISSUER": ISSUER}
    )
    keyset: Any = SimpleNamespace(session_keys={"k1": ("ES256", KEY.public_key())})
    return SessionBridge(settings, UpstreamClient(settings.upstream_url), keyset)


def token(key: Any = KEY, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "u1", "iss": ISSUER, "aud": "convex", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] == "warning"]


@pytest.mark.parametrize(
    ("made", "reason", "why", "check"),
    [
        (
            {"iss": "https://other.example"},
            "issuer",
            "wrong issuer: expected 'https://app.example', got 'https://other.example'",
            "session_issuer (SIDECAR_SESSION_ISSUER or CONVEX_SITE_URL)",
        ),
        (
            {"aud": "elsewhere"},
            "audience",
            "wrong audience: expected 'convex', got 'elsewhere'",
            "",
        ),
        ({"kid": "k9"}, "key", "unknown key id 'k9'", "jwks (SIDECAR_JWKS or JWKS)"),
        ({"key": OTHER}, "signature", "does not verify", "jwks (SIDECAR_JWKS or JWKS)"),
        ({"exp": int(time.time()) - 60}, "expired", "expired", "clocks"),
    ],
)
def test_each_refusal_names_why_and_the_setting(
    made: dict[str, Any], reason: str, why: str, check: str
) -> None:
    b = bridge()
    minted = token(**made)
    with capture_logs() as logs:
        assert b.verify_session_jwt(minted, fresh=True) is None
    [warning] = warnings(logs)
    assert warning["reason"] == reason
    assert why in warning["why"]
    assert check in warning["check"]
    assert minted not in repr(logs)


def test_one_warning_a_minute_per_reason_with_the_count_of_the_rest() -> None:
    b = bridge()
    with capture_logs() as logs:
        for _ in range(5):
            b.verify_session_jwt(token(iss="https://other.example"))
        b.verify_session_jwt(token(kid="k9"))
    assert [w["reason"] for w in warnings(logs)] == ["issuer", "key"]
    b.refusals.last["issuer"] -= 61  # a minute later
    with capture_logs() as logs:
        b.verify_session_jwt(token(iss="https://other.example"))
    [warning] = warnings(logs)
    assert warning["refused_since_last_warning"] == 4


def test_an_expired_cookie_is_routine_and_a_valid_token_is_no_warning() -> None:
    b = bridge()
    with capture_logs() as logs:
        assert b.verify_session_jwt(token(exp=int(time.time()) - 60)) is None  # a cookie
        assert b.verify_session_jwt("not a jwt") is None
        user = b.verify_session_jwt(token())
    assert user is not None
    assert user.sub == "u1"
    assert warnings(logs) == []
    assert [e["reason"] for e in logs if e["log_level"] == "debug"] == ["expired", "malformed"]
