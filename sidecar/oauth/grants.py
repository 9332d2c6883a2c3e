"""Codes, grant records and refresh-token rotation.

A *grant* is what one authorization produced: its code, the access tokens and
the refresh-token family that descend from it. Every token carries its grant
id, so revoking a grant (a replayed code, a replayed refresh token, a
revocation request) stops all of them at once.

Single use is one atomic ``swap`` in the store: of any number of concurrent
redemptions of one code, exactly one sees it unused. A refresh token is
rotated by one atomic ``put_if_absent`` of its rotation record, which names
its successor (see :meth:`Grants.rotate_refresh` for the grace period).

What one person or one client holds is read from a collection under one key
(``GRANTS_OF_PERSON``, ``GRANTS_OF_CLIENT``: member = grant id), so the
connected-apps page, ``sidecar grants list --user`` or ``--client`` and
``sidecar clients prune`` cost what that person or client holds, never the
keyspace (README, "Scale"). The grant record stays the truth: a member whose
grant is revoked or gone is skipped and dropped.

The records are typed here and written in exactly the JSON shapes earlier
versions wrote, so a running deployment's records read back. No keys: what
is signed is in :mod:`sidecar.oauth.tokens`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import structlog
from cryptography.exceptions import InvalidTag

from sidecar.config import Settings
from sidecar.oauth.consents import Consents
from sidecar.oauth.errors import InvalidGrant
from sidecar.oauth.hashing import digest
from sidecar.oauth.records import (
    AuthorizationCode,
    Grant,
    RefreshRecord,
    Rotation,
    open_successor,
    seal_successor,
)
from sidecar.observability.metrics import token_event
from sidecar.store import Store
from sidecar.store.shape import Migration

CODES, GRANTS, REFRESH = "codes", "grants", "refresh"
# Last refresh per grant, apart from the grant record: a refresh never
# rewrites the record that holds ``revoked``, so it cannot undo a revocation.
ACTIVITY = "grant_activity"
# digest(refresh token) -> its rotation: when, and its successor sealed under
# a key only the holder of the rotated token can derive.
ROTATED = "refresh_rotated"
# The collections: one per person (by hashed user id), one per client (by
# hashed client id); each member is a grant id.
GRANTS_OF_PERSON = "grants_of_person"
GRANTS_OF_CLIENT = "grants_of_client"
# The store's shapes (sidecar.store.shape): 1 held grant records only; 2 kept
# one record per grant in a namespace per person (``user_index``); 3 keeps
# the collections above.
SHAPE_GRANT_COLLECTIONS = 3

log = structlog.get_logger("sidecar.oauth")


def user_index(sub: str) -> str:
    """The namespace of one person's grant index in shape 2 (hashed: a user
    id never becomes part of a store key pattern); read by no release since."""
    return f"user_grants:{digest(sub)[:32]}"


def person_key(sub: str) -> str:
    """One person's collection key (hashed, as ``user_index`` was)."""
    return digest(sub)[:32]


def client_key(client_id: str) -> str:
    """One client's collection key (hashed: a client id may be a URL)."""
    return digest(client_id)[:32]


def new_refresh_token(grant_id: str) -> str:
    """A refresh token starts with its grant's id (rate limits per grant)."""
    return f"{grant_id}.{secrets.token_urlsafe(32)}"


class Grants:
    def __init__(self, settings: Settings, store: Store, consents: Consents | None = None) -> None:
        self.settings = settings
        self.store = store
        self.consents = consents or Consents(settings, store)

    # -- codes ------------------------------------------------------------------

    async def new_code(self, code: AuthorizationCode) -> str:
        secret = secrets.token_urlsafe(32)
        await self.store.put(CODES, digest(secret), code.to_record(), ttl=self.settings.code_ttl)
        return secret

    async def redeem_code(self, code: str) -> AuthorizationCode:
        """The code's details, once. A second redemption revokes everything
        the first one issued (RFC 9700 section 4.2.4)."""
        if not code or len(code) > 512:
            raise InvalidGrant("invalid authorization code")
        key = digest(code)
        # Peek first: an unknown code leaves nothing behind, and the grant id
        # (fixed at issue) goes on the used marker in the same atomic swap.
        peek = await self.store.get(CODES, key)
        if peek is None or "grant_id" not in peek:
            raise InvalidGrant("invalid or expired authorization code")
        marker = {"used": True, "grant_id": peek["grant_id"]}
        old = await self.store.swap(CODES, key, marker, ttl=self.settings.refresh_token_ttl)
        if old is None:
            raise InvalidGrant("invalid or expired authorization code")
        if old.get("used"):
            await self.revoke_grant(old["grant_id"])
            raise InvalidGrant("authorization code already used; its tokens are revoked")
        return AuthorizationCode.from_record(old)

    # -- grants -----------------------------------------------------------------

    async def start_grant(self, grant: Grant) -> None:
        # put_if_absent, never a plain put: when a replay of the code raced
        # ahead and revoked the grant, the revocation must stay. The one
        # redemption that won still gets its answer, but every token in it
        # carries the grant id and is refused from the start.
        ttl = self.settings.refresh_token_ttl
        if await self.store.put_if_absent(GRANTS, grant.grant_id, grant.to_record(), ttl=ttl):
            await self._index(grant)

    async def _index(self, grant: Grant, ttl: float | None = None) -> None:
        """The grant in its person's and its client's collections (each one
        store operation; replacing a member is harmless, so this may run
        again)."""
        ttl = ttl or self.settings.refresh_token_ttl
        await self.store.add_member(
            GRANTS_OF_PERSON,
            person_key(grant.sub),
            grant.grant_id,
            {"client_id": grant.client_id},
            ttl=ttl,
        )
        await self.store.add_member(
            GRANTS_OF_CLIENT,
            client_key(grant.client_id),
            grant.grant_id,
            {"sub": grant.sub},
            ttl=ttl,
        )

    async def _unindex(self, grant_id: str, sub: str, client_id: str) -> None:
        await self.store.remove_member(GRANTS_OF_PERSON, person_key(sub), grant_id)
        await self.store.remove_member(GRANTS_OF_CLIENT, client_key(client_id), grant_id)

    async def note_refresh(self, grant_id: str) -> None:
        await self.store.put(
            ACTIVITY, grant_id, {"at": int(time.time())}, ttl=self.settings.refresh_token_ttl
        )

    async def _last_refreshed(self, grant_id: str) -> int | None:
        activity = await self.store.get(ACTIVITY, grant_id)
        return activity["at"] if activity else None

    async def live_grant(self, grant_id: str) -> Grant | None:
        record = await self.store.get(GRANTS, grant_id)
        if record is None or record.get("revoked"):
            return None
        return Grant.from_record(grant_id, record, await self._last_refreshed(grant_id))

    async def grants_of(self, sub: str) -> list[Grant]:
        """The person's live grants, oldest first (reads their collection)."""
        return await self._collected(GRANTS_OF_PERSON, person_key(sub), lambda g: g.sub == sub)

    async def grants_of_client(self, client_id: str) -> list[Grant]:
        """The client's live grants, oldest first (reads its collection)."""
        return await self._collected(
            GRANTS_OF_CLIENT, client_key(client_id), lambda g: g.client_id == client_id
        )

    async def _collected(self, ns: str, key: str, belongs: Callable[[Grant], bool]) -> list[Grant]:
        ids = [grant_id for grant_id, _ in await self.store.members(ns, key)]
        found = []
        for grant_id, grant in zip(
            ids, await asyncio.gather(*(self.live_grant(i) for i in ids)), strict=True
        ):
            if grant is not None and belongs(grant):
                found.append(grant)
            else:
                # Revoked, expired, or (a digest collision) someone else's.
                await self.store.remove_member(ns, key, grant_id)
        return sorted(found, key=lambda g: g.created)

    async def all_grants(self) -> list[Grant]:
        """Every live grant (operators' listing; walks the whole namespace)."""
        found = []
        for grant_id, record in await self.store.scan(GRANTS):
            if not record.get("revoked"):
                last = await self._last_refreshed(grant_id)
                found.append(Grant.from_record(grant_id, record, last))
        return sorted(found, key=lambda g: g.created)

    async def end_grant(self, grant: Grant) -> None:
        """Revoke a grant (its refresh tokens and, through ``gid``, its access
        tokens on every replica) and forget the consent behind it, so the next
        authorization of that client asks the person again."""
        await self.revoke_grant(grant.grant_id)
        await self.consents.forget_consent(grant.sub, grant.client_id)

    async def grant(self, grant_id: str) -> Grant | None:
        """The grant record, revoked or not."""
        record = await self.store.get(GRANTS, grant_id)
        return Grant.from_record(grant_id, record) if record is not None else None

    async def revoke_grant(self, grant_id: str) -> None:
        # Merged into whatever is stored: a grant not started yet (a code
        # replay racing its first redemption) is revoked before it exists.
        existing = await self.store.get(GRANTS, grant_id) or {}
        await self.store.put(
            GRANTS, grant_id, {**existing, "revoked": True}, ttl=self.settings.refresh_token_ttl
        )
        if existing.get("sub") and existing.get("client_id"):
            await self._unindex(grant_id, str(existing["sub"]), str(existing["client_id"]))

    # -- the store's shape -------------------------------------------------------

    def migrations(self) -> list[Migration]:
        """What brings a store written by an earlier release to this one's
        shape (run at start-up by :func:`sidecar.store.shape.migrate`)."""
        return [
            Migration(SHAPE_GRANT_COLLECTIONS, "grants by person and client", self.index_grants)
        ]

    async def index_grants(self) -> int:
        """Every live grant into its person's and its client's collections.

        Walks the grant records themselves (their namespace's own index on
        Redis), so it carries both earlier shapes at once: grants written
        before any person index existed (shape 1) and those of the index per
        person (shape 2), which holds nothing its grant record does not.
        Idempotent: a replica starting at the same time does the same."""
        carried = 0
        for grant_id, record in await self.store.scan(GRANTS):
            if record.get("revoked") or not record.get("sub") or not record.get("client_id"):
                continue
            await self._index(Grant.from_record(grant_id, record))
            carried += 1
        return carried

    async def is_grant_revoked(self, grant_id: str) -> bool:
        record = await self.store.get(GRANTS, grant_id)
        return record is not None and bool(record.get("revoked"))

    # -- refresh tokens ---------------------------------------------------------

    async def keep_refresh(self, token: str, record: RefreshRecord) -> None:
        """Written only if absent: a grace answer repeats the first one."""
        await self.store.put_if_absent(
            REFRESH, digest(token), record.to_record(), ttl=self.settings.refresh_token_ttl
        )

    async def refresh_record(self, token: str) -> RefreshRecord | None:
        _grant_id, sep, _ = token.partition(".")
        record = await self.store.get(REFRESH, digest(token)) if sep else None
        return RefreshRecord.from_record(record) if record is not None else None

    async def rotate_refresh(
        self,
        token: str,
        client_id: str,
        check: Callable[[RefreshRecord], object] | None = None,
    ) -> Rotation:
        """Rotate a refresh token (RFC 9700 section 4.14.2), surviving what
        real clients do. The first use records the rotation and its successor
        in one atomic ``put_if_absent``; of any number of concurrent uses,
        exactly one wins. Presented again within
        ``refresh_reuse_grace_seconds`` (a lost answer retried, two processes
        sharing one credentials file), while its successor has not been
        rotated in turn, it is answered with that same successor, so every
        racer ends up holding the one live token. Later, or for any older
        token, the reuse is read as theft and the grant is revoked.

        ``check`` sees the presented token's record before anything is
        written and may refuse the request (an OAuthError): a refresh refused
        for what it asked (RFC 6749 section 6: a wider scope, another
        resource) consumes nothing, and the token still refreshes."""
        grant_id, sep, _ = token.partition(".")
        if not sep or len(token) > 512:
            raise InvalidGrant("invalid refresh token")
        key = digest(token)
        stored = await self.store.get(REFRESH, key)
        if stored is None:
            raise InvalidGrant("invalid or expired refresh token")
        record = RefreshRecord.from_record(stored)
        # A revoked grant is refused first, so that a replay that revoked it
        # cannot be followed by a grace answer.
        if await self.is_grant_revoked(grant_id):
            raise InvalidGrant("this grant has been revoked")
        if record.used:
            # Rotated by a version without rotation records: strict as then.
            await self.revoke_for_reuse(grant_id, client_id, "rotated before grace existed")
        if record.client_id != client_id:
            await self.revoke_for_reuse(
                grant_id,
                client_id,
                "presented by another client",
                "refresh token was issued to another client; its grant is revoked",
            )
        if check is not None:
            check(record)
        successor = new_refresh_token(grant_id)
        now = time.time()
        rotation = {"grant_id": grant_id, "at": now, "sealed": seal_successor(successor, token)}
        if await self.store.put_if_absent(
            ROTATED, key, rotation, ttl=self.settings.refresh_token_ttl
        ):
            return Rotation(record, successor, grace=False)
        return Rotation(record, await self._grace_successor(token, grant_id, client_id), True)

    async def _grace_successor(self, token: str, grant_id: str, client_id: str) -> str:
        """The successor the first rotation of ``token`` chose, within grace."""
        first = await self.store.get(ROTATED, digest(token))
        if first is None:
            raise InvalidGrant("invalid or expired refresh token")
        grace = self.settings.refresh_reuse_grace_seconds
        if grace <= 0 or time.time() - float(first["at"]) > grace:
            await self.revoke_for_reuse(grant_id, client_id, "reused after the grace period")
        try:
            successor = open_successor(str(first["sealed"]), token)
        except (InvalidTag, ValueError):
            raise InvalidGrant("invalid refresh token") from None
        if await self.store.get(ROTATED, digest(successor)) is not None:
            # Its successor was rotated too: this is an older token.
            await self.revoke_for_reuse(grant_id, client_id, "an older token reused")
        return successor

    async def revoke_for_reuse(
        self,
        grant_id: str,
        client_id: str,
        why: str,
        message: str = "refresh token already used; the whole grant is revoked",
    ) -> None:
        """The grant of a reused refresh token ends (and only that grant)."""
        await self.revoke_grant(grant_id)
        token_event("revoked", "refresh_reuse")
        log.warning(
            "refresh token reuse; grant revoked", client_id=client_id, grant_id=grant_id, why=why
        )
        raise InvalidGrant(message)

    async def revoke_refresh(self, token: str) -> bool:
        record = await self.refresh_record(token)
        if record is None:
            return False
        await self.revoke_grant(record.grant_id)
        return True
