"""The scope policy: which resources tokens are issued for (RFC 8707), what
each offers and requires, what a scope includes (``scope_includes``), and what
one authorization request is granted (RFC 6749 section 3.3)."""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.config import Resource, Settings
from sidecar.oauth.client_model import Client
from sidecar.oauth.errors import InvalidScope, InvalidTarget
from sidecar.urls import InvalidURL, canonical_url


def known_resources(settings: Settings) -> dict[str, Resource]:
    """The resources tokens may be issued for, by URL: the configured ones
    and the default one."""
    known = {r.url: r for r in settings.resources}
    known.setdefault(settings.default_resource.url, settings.default_resource)
    return known


def resource_urls(settings: Settings) -> set[str]:
    return set(known_resources(settings))


def expand_scopes(settings: Settings, scopes: Iterable[str]) -> set[str]:
    """The scopes granted ones stand for, through ``scope_includes``."""
    includes = dict(settings.scope_includes)
    seen: set[str] = set()
    todo = list(scopes)
    while todo:
        scope = todo.pop()
        if scope not in seen:
            seen.add(scope)
            todo.extend(includes.get(scope, ()))
    return seen


def resource_scopes(settings: Settings) -> set[str]:
    """Scopes that belong to some resource, not to the server as a whole."""
    scopes: set[str] = set()
    for resource in settings.resources:
        scopes |= set(resource.advertised_scopes)
    return expand_scopes(settings, scopes)


def offered_scopes(settings: Settings, resource: Resource) -> set[str]:
    """What the server offers for one resource: its own scopes (and what
    they include), and the server-wide ones that belong to no resource."""
    shared = set(settings.scopes) - resource_scopes(settings)
    return shared | expand_scopes(settings, resource.advertised_scopes)


def scopes_for(
    settings: Settings, requested: str | None, client: Client, resource: Resource
) -> list[str]:
    """Step-up (MCP 2026-07-28, SEP-2350): a client re-authorizes with the
    union of what it had and what a challenge named, under its first
    registration, so the registration's ``scope`` is what it expected to
    ask for, not a ceiling; only an operator's pre-registered client is
    pinned to its list. A scope of another resource is not granted here
    (RFC 6749 section 3.3 lets the server grant less than asked)."""
    offered = offered_scopes(settings, resource)
    pinned = client.allowed_scopes(settings.scopes) if client.pins_scopes else None
    if pinned is not None:
        offered &= pinned
    if requested is None or not requested.strip():
        wanted = [*settings.default_scopes, *resource.scopes]
        return [s for s in dict.fromkeys(wanted) if s in offered]
    wanted = list(dict.fromkeys(requested.split()))
    unknown = set(wanted) - set(settings.scopes)
    if unknown:
        raise InvalidScope(f"unknown scope {' '.join(sorted(unknown))}")
    if pinned is not None and not set(wanted) <= pinned:
        raise InvalidScope("scope not allowed for this client")
    return [s for s in wanted if s in offered]


def resource_for(settings: Settings, requested: str | None) -> str:
    """RFC 8707: one of the configured resources; absent means the default.
    Compared in canonical form (an uppercase scheme or host is accepted,
    as MCP 2026-07-28 asks)."""
    if requested is None or not requested.strip():
        return settings.default_resource.url
    values = set(requested.split())
    if len(values) != 1:
        raise InvalidTarget("one resource per authorization")
    try:
        canonical = canonical_url(values.pop())
    except InvalidURL:
        raise InvalidTarget("resource must be an absolute URL without a fragment") from None
    if canonical not in known_resources(settings):
        raise InvalidTarget("resource is not one this server issues tokens for")
    return canonical
