"""The deployment's static JWKS, as Better Auth's ``getLatestJwks()`` emits it.

Each row is ``{id, publicKey, privateKey, createdAt, expiresAt, alg}``;
``publicKey`` is a JSON string of the public JWK. ``privateKey`` is a JSON
string literal of lowercase hex ``nonce(24) || ciphertext || tag(16)``:
XChaCha20-Poly1305, no associated data, key = SHA-256 of the UTF-8 secret
(Better Auth's ``symmetricEncrypt``). With ``BETTER_AUTH_SECRETS`` the hex is
wrapped as ``$ba$<version>$<hex>`` and the version picks the secret.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

NONCE_BYTES = 24


class StaticJwksError(Exception):
    """The static JWKS cannot be used; the message says why, never a secret."""


@dataclass(frozen=True)
class StaticKeyRow:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    encrypted_private: str
    created_at: str


def parse_rows(value: str) -> list[StaticKeyRow]:
    try:
        data = json.loads(value)
    except ValueError:
        raise StaticJwksError("is not JSON (expected the array getLatestJwks() returns)") from None
    if isinstance(data, dict) and "keys" in data:
        raise StaticJwksError(
            "is a public JWKS ({keys: [...]}); the sidecar needs the static JWKS value "
            "with private keys, as the Convex deployment's JWKS variable holds it"
        )
    if not isinstance(data, list) or not data:
        raise StaticJwksError("must be a non-empty JSON array of key rows")
    rows = []
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise StaticJwksError(f"row {index} is not an object")
        try:
            public = json.loads(row["publicKey"])
            rows.append(
                StaticKeyRow(
                    kid=str(row["id"]),
                    alg=str(row.get("alg") or "RS256"),
                    public_jwk=public,
                    encrypted_private=str(row["privateKey"]),
                    created_at=str(row.get("createdAt") or ""),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StaticJwksError(f"row {index} lacks a usable {exc} field") from None
    return rows


def parse_secrets(secret: str | None, versioned: str | None) -> dict[str | None, str]:
    """Secrets by version: ``None`` is the unversioned ``BETTER_AUTH_SECRET``."""
    secrets: dict[str | None, str] = {}
    if versioned:
        for item in versioned.split(","):
            version, sep, value = item.strip().partition(":")
            if not sep or not version.strip() or not value:
                raise StaticJwksError("BETTER_AUTH_SECRETS must look like '2:new,1:old'")
            secrets[version.strip()] = value
        # Better Auth encrypts unversioned values with the current (first) secret.
        first = versioned.split(",")[0].partition(":")[2]
        secrets.setdefault(None, secret or first)
    if secret:
        secrets[None] = secret
    return secrets


def decrypt_private_jwk(row: StaticKeyRow, secrets: dict[str | None, str]) -> dict[str, Any]:
    text = row.encrypted_private
    try:
        decoded = json.loads(text)
        if isinstance(decoded, str):
            text = decoded
    except ValueError:
        pass  # already the bare hex
    version: str | None = None
    if text.startswith("$ba$"):
        _, _, version, text = text.split("$", 3)
    if version not in secrets:
        which = f"version {version} of BETTER_AUTH_SECRETS" if version else "BETTER_AUTH_SECRET"
        raise StaticJwksError(f"key {row.kid} needs {which}, which is not set")
    try:
        blob = bytes.fromhex(text)
    except ValueError:
        raise StaticJwksError(f"key {row.kid}: privateKey is not hex") from None
    if len(blob) <= NONCE_BYTES + 16:
        raise StaticJwksError(f"key {row.kid}: privateKey is too short")
    key = hashlib.sha256(secrets[version].encode("utf-8")).digest()
    try:
        plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[NONCE_BYTES:], None, blob[:NONCE_BYTES], key
        )
    except CryptoError:
        raise StaticJwksError(
            f"key {row.kid} does not decrypt with the configured Better Auth secret "
            "(a static JWKS works only with the secret that encrypted it)"
        ) from None
    jwk: dict[str, Any] = json.loads(plain)
    return jwk
