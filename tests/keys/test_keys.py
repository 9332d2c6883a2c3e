"""Keys: the deployment's static JWKS decrypts and signs; own keys are kept."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jwt
import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.keys import load_keyset
from sidecar.keys.keyset import keys_file, rotate_managed_keys
from tools import fixtures


def reuse_settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(
        env={
            "JWKS": fixtures.text("static-jwks.json"),
            "BETTER_AUTH_SECRET": fixtures.SECRET,
            **env,
        }
    )


def test_the_static_jwks_decrypts_with_its_secret_and_signs_verifiable_tokens() -> None:
    keyset = load_keyset(reuse_settings())
    assert keyset.mode == "static-jwks"
    row = fixtures.load("static-jwks.json")[0]
    assert keyset.signing.kid == row["id"]
    token = keyset.sign({"sub": "u1", "iss": "https://x/oauth"}, typ="at+jwt")
    public = fixtures.load("convex-jwks.json")["keys"][0]
    claims = jwt.decode(token, jwt.PyJWK(public).key, algorithms=["RS256"])
    assert claims["sub"] == "u1"
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": row["id"], "typ": "at+jwt"}


def test_the_versioned_form_picks_its_secret_by_version() -> None:
    keyset = load_keyset(
        load_settings(
            env={
                "JWKS": fixtures.text("static-jwks-versioned.json"),
                "BETTER_AUTH_SECRETS": fixtures.SECRETS,
            }
        )
    )
    token = keyset.sign({"sub": "u2"}, typ="at+jwt")
    alg, key = keyset.verifying[keyset.signing.kid]
    assert jwt.decode(token, key, algorithms=[alg])["sub"] == "u2"


def test_a_wrong_secret_stops_start_up_with_a_clear_message() -> None:
    with pytest.raises(ConfigError) as error:
        load_keyset(reuse_settings(BETTER_AUTH_SECRET="not-the-secret"))
    assert error.value.key == "jwks"
    assert "does not decrypt" in error.value.message
    assert "not-the-secret" not in str(error.value)


def test_a_versioned_key_without_its_secret_version_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        load_keyset(
            load_settings(
                env={
                    "JWKS": fixtures.text("static-jwks-versioned.json"),
                    "BETTER_AUTH_SECRETS": "7:some-other-secret",
                }
            )
        )
    assert "version 2" in error.value.message


def test_jwks_without_any_secret_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        load_keyset(load_settings(env={"JWKS": fixtures.text("static-jwks.json")}))
    assert error.value.key == "better_auth_secret"


def test_a_public_jwks_given_as_jwks_is_explained() -> None:
    with pytest.raises(ConfigError) as error:
        load_keyset(
            load_settings(
                env={
                    "JWKS": fixtures.text("convex-jwks.json"),
                    "BETTER_AUTH_SECRET": fixtures.SECRET,
                }
            )
        )
    assert "public JWKS" in error.value.message


def test_only_public_keys_are_published() -> None:
    for keyset in (load_keyset(reuse_settings()),):
        for key in keyset.jwks()["keys"]:
            assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
            assert key["kid"]
            assert key["alg"] == "RS256"


def test_the_embedded_default_generates_a_key_once_and_keeps_it_0600(tmp_path: Path) -> None:
    settings = load_settings(env={"SIDECAR_DATA_DIR": str(tmp_path)})
    first = load_keyset(settings)
    assert first.mode == "generated"
    assert first.generated_now
    path = keys_file(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = load_keyset(settings)
    assert not second.generated_now
    assert second.signing.kid == first.signing.kid


def test_rotation_signs_with_the_new_key_and_keeps_the_old_one_published(tmp_path: Path) -> None:
    settings = load_settings(env={"SIDECAR_DATA_DIR": str(tmp_path)})
    old = load_keyset(settings)
    token = old.sign({"sub": "before"}, typ="at+jwt")
    new_key = rotate_managed_keys(settings)
    rotated = load_keyset(settings)
    assert rotated.signing.kid == new_key["kid"] != old.signing.kid
    assert {k["kid"] for k in rotated.jwks()["keys"]} == {old.signing.kid, new_key["kid"]}
    alg, key = rotated.verifying[old.signing.kid]
    assert jwt.decode(token, key, algorithms=[alg])["sub"] == "before"
    # Once its tokens have expired the old key is no longer published.
    import time

    later = rotate_managed_keys(settings, now=time.time() + settings.access_token_ttl + 120)
    kids = {k["kid"] for k in json.loads(keys_file(settings).read_text())["keys"]}
    assert old.signing.kid not in kids
    assert later["kid"] in kids


def test_a_pem_key_file_is_loaded(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyset = load_keyset(load_settings(env={"SIDECAR_SIGNING_KEY_FILE": str(path)}))
    assert keyset.mode == "key-file"
    token = keyset.sign({"sub": "pem"}, typ="at+jwt")
    assert jwt.decode(token, key.public_key(), algorithms=["RS256"])["sub"] == "pem"


def test_a_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as error:
        load_keyset(load_settings(env={"SIDECAR_SIGNING_KEY_FILE": str(path)}))
    assert error.value.key == "signing_key_file"


def test_serve_with_a_wrong_secret_exits_2_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": "/usr/bin:/bin",
            "JWKS": fixtures.text("static-jwks.json"),
            "BETTER_AUTH_SECRET": "wrong-secret",
            "CONVEX_SITE_URL": fixtures.SITE_URL,
            "SIDECAR_DATA_DIR": str(tmp_path),
            "SIDECAR_PORT": "0",
        },
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sidecar: configuration error: jwks (SIDECAR_JWKS / JWKS):")
    assert "does not decrypt" in lines[0]
    assert "wrong-secret" not in result.stderr
