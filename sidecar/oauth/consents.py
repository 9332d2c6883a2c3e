"""Remembered consent: what a person allowed a client on a resource, so the
next authorization of the same scopes does not ask again.

Records are keyed by a digest of the person and client (and resource): a
user id never becomes part of a store key. ``{"scope": [...]}`` per resource,
``{"approved": True}`` per client (any resource; it lets an authorization
error go back to that client, RFC 9700 section 4.11.2).
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.config import Settings
from sidecar.oauth.hashing import digest
from sidecar.oauth.scopes import expand_scopes, resource_urls
from sidecar.store import Store

CONSENTS = "consents"
CONSENT_TTL = 180 * 86400


def consent_may_be_skipped(prompt: Iterable[str], scope: Iterable[str]) -> bool:
    """Whether a remembered consent may answer this request.

    ``prompt=consent`` asks for the page, and gets it; except where it only
    accompanies ``offline_access``: the MCP TypeScript SDK (Claude Code,
    claude.ai, Desktop) adds both to every authorization, so honouring it
    would ask a person on every connect. OpenID Connect Core section 11 lets
    a server skip the prompt when other conditions permit offline access;
    here refresh tokens follow the client's registered grant, and the
    person's earlier consent to exactly these scopes (offline_access
    included) is that condition."""
    return "consent" not in set(prompt) or "offline_access" in set(scope)


def _approved_key(sub: str, client_id: str) -> str:
    return digest(f"{sub}\x00{client_id}")


def _consent_key(sub: str, client_id: str, resource: str) -> str:
    return digest(f"{sub}\x00{client_id}\x00{resource}")


class Consents:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def remembered_consent(
        self, sub: str, client_id: str, resource: str, scope: Iterable[str]
    ) -> bool:
        return set(scope) <= await self.consented_scopes(sub, client_id, resource)

    async def consented_scopes(self, sub: str, client_id: str, resource: str) -> set[str]:
        """What this person already allowed this client on this resource
        (with what those scopes include)."""
        record = await self.store.get(CONSENTS, _consent_key(sub, client_id, resource))
        return expand_scopes(self.settings, record.get("scope", [])) if record else set()

    async def has_approved(self, sub: str, client_id: str) -> bool:
        """Whether this person has ever approved this client (any resource)."""
        return await self.store.get(CONSENTS, _approved_key(sub, client_id)) is not None

    async def remember_consent(
        self, sub: str, client_id: str, resource: str, scope: Iterable[str]
    ) -> None:
        key = _consent_key(sub, client_id, resource)
        existing = await self.store.get(CONSENTS, key) or {}
        merged = sorted(set(existing.get("scope", [])) | set(scope))
        await self.store.put(CONSENTS, key, {"scope": merged}, ttl=CONSENT_TTL)
        await self.store.put(
            CONSENTS, _approved_key(sub, client_id), {"approved": True}, ttl=CONSENT_TTL
        )

    async def forget_consent(self, sub: str, client_id: str) -> None:
        for resource in resource_urls(self.settings):
            await self.store.delete(CONSENTS, _consent_key(sub, client_id, resource))
        await self.store.delete(CONSENTS, _approved_key(sub, client_id))
