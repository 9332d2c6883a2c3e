"""The OAuth state the store keeps, typed: a person's profile, an
authorization code, a grant, a refresh token's record, a rotation; each
read and written in exactly the JSON shapes earlier versions wrote, so a
running deployment's records read back. And the sealing of a rotated refresh
token's successor, readable only with the token it replaced."""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.oauth.hashing import digest
from sidecar.store import Record


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(s) for s in value or ())


@dataclass(frozen=True)
class Profile:
    """What a grant knows of its person besides the id (OpenID Connect Core
    section 5.4 claims): ``{"email": ..., "name": ...}`` in a record."""

    email: str | None = None
    name: str | None = None

    def to_record(self) -> dict[str, str | None]:
        return {"email": self.email, "name": self.name}

    @classmethod
    def from_record(cls, value: Any) -> Profile:
        value = value if isinstance(value, dict) else {}
        return cls(value.get("email"), value.get("name"))


@dataclass(frozen=True)
class AuthorizationCode:
    """An unredeemed code's record (stored under the code's digest)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: tuple[str, ...]
    resource: str
    nonce: str | None
    sub: str
    user: Profile
    auth_time: int | None
    grant_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_record(self) -> Record:
        return {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "scope": list(self.scope),
            "resource": self.resource,
            "nonce": self.nonce,
            "sub": self.sub,
            "user": self.user.to_record(),
            "auth_time": self.auth_time,
            "grant_id": self.grant_id,
            "used": False,
        }

    @classmethod
    def from_record(cls, record: Record) -> AuthorizationCode:
        return cls(
            client_id=record["client_id"],
            redirect_uri=record["redirect_uri"],
            code_challenge=record["code_challenge"],
            scope=_strings(record.get("scope")),
            resource=record["resource"],
            nonce=record.get("nonce"),
            sub=record["sub"],
            user=Profile.from_record(record.get("user")),
            auth_time=record.get("auth_time"),
            grant_id=record["grant_id"],
        )


@dataclass(frozen=True)
class Grant:
    """A grant record (under its id); ``last_refreshed`` is read beside it."""

    grant_id: str
    client_id: str
    sub: str
    scope: tuple[str, ...] = ()
    resource: str | None = None
    email: str | None = None
    name: str | None = None
    auth_time: int | None = None
    revoked: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    last_refreshed: int | None = None

    @classmethod
    def from_code(cls, code: AuthorizationCode) -> Grant:
        return cls(
            grant_id=code.grant_id,
            client_id=code.client_id,
            sub=code.sub,
            scope=code.scope,
            resource=code.resource,
            email=code.user.email,
            name=code.user.name,
            auth_time=code.auth_time,
        )

    def to_record(self) -> Record:
        return {
            "client_id": self.client_id,
            "sub": self.sub,
            "email": self.email,
            "name": self.name,
            "scope": list(self.scope),
            "resource": self.resource,
            "auth_time": self.auth_time,
            "revoked": self.revoked,
            "created": self.created,
        }

    @classmethod
    def from_record(cls, grant_id: str, record: Record, last_refreshed: int | None = None) -> Grant:
        return cls(
            grant_id=grant_id,
            client_id=str(record.get("client_id", "")),
            sub=str(record.get("sub", "")),
            scope=_strings(record.get("scope")),
            resource=record.get("resource"),
            email=record.get("email"),
            name=record.get("name"),
            auth_time=record.get("auth_time"),
            revoked=bool(record.get("revoked")),
            created=record.get("created") or 0,
            last_refreshed=last_refreshed,
        )


@dataclass(frozen=True)
class RefreshRecord:
    """A refresh token's record (under the token's digest)."""

    grant_id: str
    client_id: str
    sub: str
    scope: tuple[str, ...]
    resource: str
    user: Profile = Profile()
    auth_time: int | None = None
    used: bool = False  # set only by versions before rotation records

    def to_record(self) -> Record:
        return {
            "grant_id": self.grant_id,
            "client_id": self.client_id,
            "sub": self.sub,
            "scope": list(self.scope),
            "resource": self.resource,
            "used": self.used,
            "user": self.user.to_record(),
            "auth_time": self.auth_time,
        }

    @classmethod
    def from_record(cls, record: Record) -> RefreshRecord:
        return cls(
            grant_id=record["grant_id"],
            client_id=record["client_id"],
            sub=record["sub"],
            scope=_strings(record.get("scope")),
            resource=record["resource"],
            user=Profile.from_record(record.get("user")),
            auth_time=record.get("auth_time"),
            used=bool(record.get("used")),
        )


@dataclass(frozen=True)
class Rotation:
    record: RefreshRecord  # the presented refresh token's record
    successor: str  # the refresh token to answer with
    grace: bool  # a retry or race answered with the first answer's successor


def _successor_key(token: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"sidecar refresh successor"
    ).derive(token.encode())


def seal_successor(successor: str, token: str) -> str:
    """The successor, readable only with the token it replaced: a store dump
    holds no usable refresh token (the store keeps hashes otherwise)."""
    nonce = os.urandom(12)
    sealed = AESGCM(_successor_key(token)).encrypt(
        nonce, successor.encode(), digest(token).encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def open_successor(sealed: str, token: str) -> str:
    raw = base64.urlsafe_b64decode(sealed)
    plain = AESGCM(_successor_key(token)).decrypt(raw[:12], raw[12:], digest(token).encode())
    return plain.decode()
