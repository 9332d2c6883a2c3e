"""Which paths the sidecar serves itself, and the check that what it would
serve is what the configuration says.

The sidecar owns the ``/oauth`` namespace, the authorization server's
discovery documents and each resource's protected resource metadata; every
other path belongs to the app behind it.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from sidecar.config import ConfigError, Resource, Settings

OAUTH_PREFIX = "/oauth"
PRM_PREFIX = "/.well-known/oauth-protected-resource"
HEALTH_PREFIXES = ("/oauth/healthz", "/oauth/readyz")


class Guard(Protocol):
    """What the fail-closed check asks of the gateway."""

    def match(self, path: str) -> object: ...


def discovery_paths() -> list[str]:
    """Where clients look for the metadata of issuer <origin>/oauth, in the
    order MCP clients try them (RFC 8414 section 3.1 path insertion, then
    OpenID Connect Discovery 1.0 section 4; README, "OAuth for MCP
    clients"), plus the older issuer-relative form."""
    return [
        "/.well-known/oauth-authorization-server/oauth",
        "/.well-known/openid-configuration/oauth",
        "/oauth/.well-known/openid-configuration",
        "/oauth/.well-known/oauth-authorization-server",
    ]


def prm_path(resource: Resource | str) -> str:
    """RFC 9728 section 3.1: the path-inserted well-known path of a
    resource's metadata (a :class:`Resource`, or its URL)."""
    url = resource.url if isinstance(resource, Resource) else resource
    return PRM_PREFIX + urlsplit(url).path.rstrip("/")


def prm_paths(settings: Settings) -> dict[str, Resource]:
    """The metadata path of each resource served on the public origin ->
    the resource."""
    return {
        prm_path(resource): resource
        for resource in settings.known_resources
        if settings.on_public_origin(resource)
    }


def ingress_routes(settings: Settings) -> tuple[list[str], list[str]]:
    """What an ingress that routes only the sidecar's paths must send to it:
    (path prefixes, exact paths). Everything else can go straight to the app.
    Metadata-only resources are the app's to serve, so they are not listed."""
    prefixes = [OAUTH_PREFIX]
    for resource in settings.resources:
        if resource.mode == "enforce" and settings.on_public_origin(resource):
            prefixes.append(resource.path.rstrip("/"))
    exact = [p for p in discovery_paths() if not p.startswith(OAUTH_PREFIX + "/")]
    exact += list(prm_paths(settings))
    return prefixes, exact


class RouteTable:
    """Which paths the sidecar owns; everything else is the upstream's."""

    def __init__(self, settings: Settings) -> None:
        self.exact: set[str] = set(discovery_paths()) | set(prm_paths(settings))
        self.prefixes: tuple[str, ...] = (OAUTH_PREFIX + "/",)
        self.settings = settings

    def owns(self, path: str) -> bool:
        return self.route_class(path) is not None

    def route_class(self, path: str) -> str | None:
        """The access log's route class of a path the sidecar serves itself,
        ``health`` or ``oauth``; None for a path that is the app's."""
        if path == OAUTH_PREFIX or path.startswith(self.prefixes) or path in self.exact:
            return "health" if path.startswith(HEALTH_PREFIXES) else "oauth"
        return None


def check_served_as_configured(settings: Settings, routes: RouteTable, gateway: Guard) -> None:
    """Fail closed: every resource on the public origin has its metadata
    served here, and every enforced one is guarded by the gateway; where the
    configuration and what would be served disagree, start-up stops."""
    for resource in settings.resources:
        if not settings.on_public_origin(resource):
            continue
        if not routes.owns(prm_path(resource)):
            raise ConfigError("resources", f"the metadata of {resource.url} would not be served")
        if resource.mode != "enforce":
            continue
        for path in (resource.path, resource.path.rstrip("/") + "/x"):
            if routes.owns(path):
                raise ConfigError(
                    "resources",
                    f"{resource.url} would be served unguarded: its path {resource.path} "
                    "belongs to the sidecar's own routes",
                )
            if gateway.match(path) is not resource:
                raise ConfigError(
                    "resources",
                    f"{resource.url} would be served unguarded: its path {resource.path} "
                    "resolves differently under different routers (a dot segment, an "
                    "encoded separator or a ';')",
                )
