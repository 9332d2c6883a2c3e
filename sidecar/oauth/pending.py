"""An authorization request waiting for its person: between
``/oauth/authorize``, the app's login page and the consent form.

The record is what earlier versions wrote, key for key, so requests in
flight survive an upgrade. ``sub`` and ``csrf`` appear once the request is
bound to the person who sees its consent page (RFC 9700 section 4.7).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sidecar.config import Settings
from sidecar.store import Record, Store

PENDING = "pending"


@dataclass(frozen=True)
class PendingAuthorization:
    request_id: str
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scope: tuple[str, ...]
    resource: str
    prompt: tuple[str, ...]  # sorted
    nonce: str | None
    login_prompted: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    sub: str | None = None
    csrf: str | None = None

    @property
    def bound(self) -> bool:
        """Bound to a person, with a CSRF token shown to them alone."""
        return self.sub is not None and bool(self.csrf)

    def to_record(self) -> Record:
        record: Record = {
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "scope": list(self.scope),
            "resource": self.resource,
            "prompt": list(self.prompt),
            "nonce": self.nonce,
            "request_id": self.request_id,
            "client_id": self.client_id,
            "login_prompted": self.login_prompted,
            "created": self.created,
        }
        if self.sub is not None:
            record["sub"] = self.sub
        if self.csrf is not None:
            record["csrf"] = self.csrf
        return record

    @classmethod
    def from_record(cls, record: Record) -> PendingAuthorization:
        return cls(
            request_id=record["request_id"],
            client_id=record["client_id"],
            redirect_uri=record["redirect_uri"],
            state=record.get("state"),
            code_challenge=record["code_challenge"],
            scope=tuple(record["scope"]),
            resource=record["resource"],
            prompt=tuple(record["prompt"]),
            nonce=record.get("nonce"),
            login_prompted=bool(record.get("login_prompted")),
            created=int(record["created"]),
            sub=record.get("sub"),
            csrf=None if record.get("csrf") is None else str(record["csrf"]),
        )


class PendingAuthorizations:
    """Pending requests in the store, shared by replicas. A request lives
    ``pending_authorization_ttl`` from its creation, however often it is
    saved again."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def save(self, pending: PendingAuthorization) -> None:
        remaining = max(
            1, pending.created + self.settings.pending_authorization_ttl - int(time.time())
        )
        await self.store.put(PENDING, pending.request_id, pending.to_record(), ttl=remaining)

    async def get(self, request_id: str) -> PendingAuthorization | None:
        record = await self.store.get(PENDING, request_id) if request_id else None
        return PendingAuthorization.from_record(record) if record is not None else None

    async def take(self, request_id: str) -> PendingAuthorization | None:
        """Single use: of concurrent takes, one gets the request."""
        record = await self.store.take(PENDING, request_id)
        return PendingAuthorization.from_record(record) if record is not None else None

    async def delete(self, request_id: str) -> None:
        await self.store.delete(PENDING, request_id)
