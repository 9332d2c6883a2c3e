"""The keys that sign and verify the sidecar's tokens.

Reuse mode (``JWKS`` and the Better Auth secret set): the deployment's static
JWKS private key signs, under the sidecar's own issuer and audience. Own-key
mode: a PEM or JWK file (``signing_key_file``), or keys the sidecar generates
and keeps in ``data_dir/signing-keys.json`` (mode 0600), rotated with
``sidecar keys rotate``. Keys are parsed once at start (and again only when
the key file changes), never per request: loading a PEM costs ~45 ms, a
signature ~0.4 ms (RSA-2048 with `cryptography`, measured here).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.config import ConfigError, Settings
from sidecar.keys.static_jwks import (
    StaticJwksError,
    decrypt_private_jwk,
    parse_rows,
    parse_secrets,
)

SUPPORTED_ALGS = ("RS256", "ES256")  # what Convex's customJwt accepts
KEYS_FILE = "signing-keys.json"
PUBLIC_FIELDS = {"kty", "n", "e", "crv", "x", "y"}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any  # a cryptography private key object, parsed once
    public_jwk: dict[str, Any]


@dataclass
class KeySet:
    signing: SigningKey
    # kid -> (alg, public key object) for every key whose tokens may still be live.
    verifying: dict[str, tuple[str, Any]]
    published: list[dict[str, Any]]
    mode: str  # "static-jwks", "key-file" or "generated"
    # Public keys of the Convex session JWTs (the static JWKS), when configured.
    session_keys: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # True when this start generated the key (said in the start-up log).
    generated_now: bool = False
    # When the signing key was made (epoch seconds), where known (metrics).
    signing_created_at: float | None = None

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        return jwt.encode(
            claims,
            self.signing.private,
            algorithm=self.signing.alg,
            headers={"kid": self.signing.kid, "typ": typ},
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": self.published}


def public_jwk(jwk: dict[str, Any], kid: str, alg: str) -> dict[str, Any]:
    public = {k: v for k, v in jwk.items() if k in PUBLIC_FIELDS}
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    return (RSAAlgorithm if alg.startswith("RS") else ECAlgorithm).from_jwk(
        json.dumps({k: v for k, v in jwk.items() if k in PUBLIC_FIELDS})
    )


def _private_key(jwk: dict[str, Any], alg: str) -> Any:
    return (RSAAlgorithm if alg.startswith("RS") else ECAlgorithm).from_jwk(json.dumps(jwk))


def _alg_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ES256"
    raise ValueError("only RSA and P-256 keys can sign tokens Convex accepts")


def _to_jwk(key: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key, as_dict=True)
    return jwk


# -- reuse mode ----------------------------------------------------------------


def _static_mode(settings: Settings) -> KeySet:
    assert settings.jwks is not None
    try:
        rows = parse_rows(settings.jwks)
    except StaticJwksError as exc:
        raise ConfigError("jwks", str(exc)) from None
    session_keys = {}
    published = []
    for row in rows:
        if row.alg not in SUPPORTED_ALGS:
            raise ConfigError(
                "jwks", f"key {row.kid} uses {row.alg}; Convex accepts RS256 or ES256"
            )
        session_keys[row.kid] = (row.alg, _public_key(row.public_jwk, row.alg))
        published.append(public_jwk(row.public_jwk, row.kid, row.alg))
    if settings.signing_key_file:
        keyset = _file_mode(settings)
        keyset.session_keys = session_keys
        return keyset
    if not (settings.better_auth_secret or settings.better_auth_secrets):
        raise ConfigError(
            "better_auth_secret",
            "JWKS is set but neither BETTER_AUTH_SECRET nor BETTER_AUTH_SECRETS is: "
            "the static JWKS private key cannot be decrypted",
        )
    try:
        secret_map = parse_secrets(settings.better_auth_secret, settings.better_auth_secrets)
        newest = max(rows, key=lambda r: r.created_at)
        private_jwk = decrypt_private_jwk(newest, secret_map)
    except StaticJwksError as exc:
        raise ConfigError("jwks", str(exc)) from None
    signing = SigningKey(
        kid=newest.kid,
        alg=newest.alg,
        private=_private_key(private_jwk, newest.alg),
        public_jwk=public_jwk(newest.public_jwk, newest.kid, newest.alg),
    )
    return KeySet(
        signing,
        dict(session_keys),
        published,
        "static-jwks",
        session_keys,
        signing_created_at=_iso_time(newest.created_at),
    )


# -- own-key mode --------------------------------------------------------------


def _file_mode(settings: Settings) -> KeySet:
    assert settings.signing_key_file is not None
    path = Path(settings.signing_key_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("signing_key_file", f"cannot read {path}: {exc.strerror}") from None
    kid = None
    try:
        if data.lstrip().startswith(b"{"):
            jwk = json.loads(data)
            kid = jwk.get("kid")
            alg = jwk.get("alg") or ("RS256" if jwk.get("kty") == "RSA" else "ES256")
            private = _private_key(jwk, alg)
        else:
            private = serialization.load_pem_private_key(data, password=None)
        alg = _alg_for(private)
    except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
        raise ConfigError(
            "signing_key_file", f"{path} is not a usable private key: {exc}"
        ) from None
    jwk = _to_jwk(private)
    kid = kid or jwt.PyJWK(jwk).key_id or _thumbprint_kid(jwk)
    signing = SigningKey(kid, alg, private, public_jwk(jwk, kid, alg))
    return KeySet(signing, {kid: (alg, private.public_key())}, [signing.public_jwk], "key-file")


def _thumbprint_kid(jwk: dict[str, Any]) -> str:
    import base64
    import hashlib

    members = {k: jwk[k] for k in ("crv", "e", "kty", "n", "x", "y") if k in jwk}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def keys_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / KEYS_FILE


def read_managed_keys(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigError("data_dir", f"{path} is unreadable: {exc}") from None
    keys: list[dict[str, Any]] = document.get("keys", [])
    return keys


def write_managed_keys(path: Path, keys: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # Created 0600 from the start: a private key is never world-readable.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"keys": keys}, handle, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def new_managed_key() -> dict[str, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "kid": secrets.token_urlsafe(12),
        "alg": "RS256",
        "created_at": int(time.time()),
        "retire_at": None,
        "jwk": _to_jwk(private),
    }


def rotate_managed_keys(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Add a key that signs from now on; older keys stay published until the
    tokens they signed have expired (access_token_ttl, plus a minute)."""
    now = time.time() if now is None else now
    path = keys_file(settings)
    keys = [k for k in read_managed_keys(path) if not _retired(k, now)]
    for key in keys:
        if key.get("retire_at") is None:
            key["retire_at"] = int(now + settings.access_token_ttl + 60)
    new = new_managed_key()
    new["created_at"] = int(now)
    keys.append(new)
    write_managed_keys(path, keys)
    return new


def _retired(key: dict[str, Any], now: float) -> bool:
    return key.get("retire_at") is not None and key["retire_at"] <= now


def _generated_mode(settings: Settings, now: float | None = None) -> KeySet:
    now = time.time() if now is None else now
    path = keys_file(settings)
    keys = [k for k in read_managed_keys(path) if not _retired(k, now)]
    generated = False
    if not keys:
        keys = [new_managed_key()]
        write_managed_keys(path, keys)
        generated = True
    verifying = {}
    published = []
    for key in keys:
        verifying[key["kid"]] = (key["alg"], _public_key(key["jwk"], key["alg"]))
        published.append(public_jwk(key["jwk"], key["kid"], key["alg"]))
    newest = keys[-1]  # rotation appends: the last key is the newest
    signing = SigningKey(
        newest["kid"],
        newest["alg"],
        _private_key(newest["jwk"], newest["alg"]),
        public_jwk(newest["jwk"], newest["kid"], newest["alg"]),
    )
    return KeySet(
        signing,
        verifying,
        published,
        "generated",
        generated_now=generated,
        signing_created_at=float(newest["created_at"]),
    )


def _iso_time(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def check_keys(settings: Settings) -> None:
    """What :func:`load_keyset` checks, without generating a key: a static
    JWKS decrypts with the secret, a key file parses, generated keys already
    in data_dir parse (check-config)."""
    if settings.jwks or settings.signing_key_file:
        load_keyset(settings)
        return
    path = keys_file(settings)
    for key in read_managed_keys(path):
        try:
            _private_key(key["jwk"], key["alg"])
        except (KeyError, TypeError, ValueError, jwt.InvalidKeyError) as exc:
            raise ConfigError("data_dir", f"{path} holds a key that does not load: {exc}") from None


def load_keyset(settings: Settings) -> KeySet:
    if settings.jwks:
        return _static_mode(settings)
    if settings.signing_key_file:
        return _file_mode(settings)
    return _generated_mode(settings)
