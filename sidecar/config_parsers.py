"""How one configuration value is read.

Each parser takes ``(key, value)``, where the value is what TOML gave or the
environment's string, and returns the typed value or raises
:class:`ConfigError` naming the key. Parsers with bounds are made by a
factory (``integer(0, 65535)``). :class:`Resource`, the value of
``resources``, lives here with its parser.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.urls import InvalidURL, canonical_url, is_under

Parser = Callable[[str, Any], Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration value that cannot be used; ``key`` names it."""

    def __init__(self, key: str, message: str, env: str | None = None) -> None:
        self.key = key
        self.message = message
        # The environment variable that gave the value, when that is known
        # (the error then names it rather than every name of the key).
        self.env = env
        super().__init__(f"{key}: {message}")


RESOURCE_MODES = ("enforce", "metadata-only")
RESOURCE_OPTIONS = ("mode", "scopes", "scopes_supported")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
STORE_SCHEMES = ("sqlite", "memory", "redis", "rediss", "redis+sentinel", "redis+cluster")
# RFC 6749 section 3.3: scope-token = 1*NQCHAR.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True)
class Resource:
    """A protected resource (an MCP endpoint) tokens may be issued for.

    ``enforce``: the sidecar checks the bearer token of every request to the
    path (and below it) before passing it on. ``metadata-only``: it serves the
    resource's metadata and passes requests through untouched; the app checks
    tokens itself."""

    url: str  # sidecar.urls.canonical_url form
    mode: str = "enforce"
    scopes: tuple[str, ...] = ()  # required of every token (403 insufficient_scope)
    scopes_supported: tuple[str, ...] = ()  # offered besides the required ones

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    @property
    def advertised_scopes(self) -> tuple[str, ...]:
        """What its metadata and 401 name: the minimal set for basic use
        (MCP 2026-07-28), its required scopes first; never offline_access."""
        return tuple(dict.fromkeys(self.scopes + self.scopes_supported))


# -- plain values ----------------------------------------------------------


def as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value.strip()


def as_int(key: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a whole number, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(key, f"must be {bounds}, got {number}")
    return number


def integer(minimum: int = 0, maximum: int | None = None) -> Parser:
    """A whole number from ``minimum`` to ``maximum`` (no upper bound: None)."""
    return lambda key, value: as_int(key, value, minimum, maximum)


def seconds(minimum: float = 0.0) -> Parser:
    """A number of seconds, at least ``minimum``; never NaN."""

    def parse(key: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ConfigError(key, f"must be a number of seconds, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be a number of seconds, got {value!r}") from None
        if number != number or number < minimum:  # NaN or too small
            raise ConfigError(key, f"must be at least {minimum}, got {value!r}")
        return number

    return parse


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"must be true or false, got {value!r}")


def choice(*choices: str) -> Parser:
    def parse(key: str, value: Any) -> str:
        text = as_str(key, value).lower()
        if text not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def as_list(key: str, value: Any) -> list[str]:
    """A TOML array of strings, or a comma-separated string (environment)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ConfigError(key, f"must be a list of strings, got {value!r}")


def as_strings(key: str, value: Any) -> tuple[str, ...]:
    return tuple(as_list(key, value))


def as_hosts(key: str, value: Any) -> tuple[str, ...]:
    return tuple(host.lower() for host in as_list(key, value))


def as_networks(key: str, value: Any) -> tuple[Network, ...]:
    networks = []
    for item in as_list(key, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(key, f"{item!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def as_workers(key: str, value: Any) -> int:
    """1 to 256, or "auto": the CPUs this process may use."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return usable_cpus()
    return as_int(key, value, 1, 256)


def usable_cpus() -> int:
    """The CPUs this process may run on, capped by a cgroup CPU quota (a
    container's limit), at least one."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def shown(name: str, secret: bool, value: Any) -> Any:
    """A key's value for display (check-config), a secret replaced."""
    if secret and value:
        return "<redacted>"
    if name == "resources":
        return [
            {
                "url": r.url,
                "mode": r.mode,
                "scopes": list(r.scopes),
                "scopes_supported": list(r.scopes_supported),
            }
            for r in value
        ]
    if name == "scope_includes":
        return {scope: list(included) for scope, included in value}
    if name in ("trusted_proxies", "trusted_client_egress"):
        return [str(n) for n in value]
    return list(value) if isinstance(value, tuple) else value


# -- URLs, paths and files -------------------------------------------------


def as_origin(key: str, value: Any) -> str:
    """An http(s) origin: scheme and host (and port), no path, query or fragment."""
    text = as_str(key, value)
    try:
        return canonical_url(text, allow_path=False)
    except InvalidURL as exc:
        raise ConfigError(
            key, f"must be an http(s) origin without path, query or user: {exc}"
        ) from None


def as_issuer(key: str, value: Any) -> str:
    """RFC 8414 section 2: an https URL; here always <origin>/oauth."""
    try:
        issuer = canonical_url(as_str(key, value))
    except InvalidURL as exc:
        raise ConfigError(key, f"{exc} (RFC 8414 section 2)") from None
    if urlsplit(issuer).path != "/oauth":
        raise ConfigError(key, f"must be <origin>/oauth, the sidecar's namespace, got {issuer!r}")
    return issuer


def as_jwks(key: str, value: Any) -> str:
    """The deployment's static JWKS (Better Auth's jwks table as JSON; its
    rows are read with the keys, sidecar/keys/static_jwks.py). Set but empty
    is an error, never "unset": ``--from-literal=JWKS="$JWKS"``
    with the variable unset would otherwise leave each replica generating
    its own key."""
    text = as_str(key, value)
    if not text:
        raise ConfigError(
            key,
            "is set but empty: give the deployment's JWKS (its Convex environment "
            "variable), or unset it for own-key mode",
        )
    return text


def same_machine(host_a: str, host_b: str) -> bool:
    """Two host names that reach the same machine as far as a listener on
    one of them is concerned (loopback and the any-address count as one)."""
    local = {"127.0.0.1", "localhost", "0.0.0.0", "::", "::1", "[::1]", "[::]", ""}
    a, b = host_a.lower().strip("[]"), host_b.lower().strip("[]")
    return a == b or (a in local and b in local)


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def as_session_issuer(key: str, value: Any) -> str:
    return as_str(key, value).rstrip("/")


def as_path(key: str, value: Any) -> str:
    text = as_str(key, value)
    if not text.startswith("/") or "?" in text or "#" in text:
        raise ConfigError(key, f"must be an absolute path like /api/auth, got {text!r}")
    return text.rstrip("/") or "/"


def as_login_url(key: str, value: Any) -> str:
    login = as_str(key, value)
    if not (login.startswith("/") or login.startswith(("http://", "https://"))):
        raise ConfigError(key, f"must be a path or an http(s) URL, got {login!r}")
    return login


def as_link(key: str, value: Any) -> str:
    link = as_str(key, value)
    if not link.startswith(("https://", "http://", "/")):
        raise ConfigError(key, f"must be an http(s) URL or a path, got {link!r}")
    return link


def as_image_link(key: str, value: Any) -> str:
    """A link, or an inline ``data:image/...`` URL."""
    text = as_str(key, value)
    return text if text.startswith("data:image/") else as_link(key, text)


def as_store_url(key: str, value: Any) -> str:
    text = as_str(key, value)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            key, f"must start with one of {', '.join(STORE_SCHEMES)}://, got {text!r}"
        )
    return text


def as_file(key: str, value: Any) -> str:
    path = as_str(key, value)
    if not Path(path).is_file():
        raise ConfigError(key, f"{path} is not a readable file")
    return path


def as_dir(key: str, value: Any) -> str:
    folder = as_str(key, value)
    if not Path(folder).is_dir():
        raise ConfigError(key, f"{folder} is not a directory")
    return folder


def as_cors_origins(key: str, value: Any) -> tuple[str, ...]:
    """Origins, or "*" for any; "none" alone is the environment's way to say []."""
    origins = as_list(key, value)
    if [o.lower() for o in origins] == ["none"]:
        origins = []
    try:
        return tuple(o if o == "*" else canonical_url(o, allow_path=False) for o in origins)
    except InvalidURL as exc:
        raise ConfigError(key, f"each must be an origin or *: {exc}") from None


# -- the gateway and pages -------------------------------------------------


def as_header_prefix(key: str, value: Any) -> str:
    prefix = as_str(key, value)
    if not prefix or not all(c.isalnum() or c == "-" for c in prefix):
        raise ConfigError(key, "must be letters, digits and dashes")
    return prefix


def as_convex_audience(key: str, value: Any) -> str:
    audience = as_str(key, value)
    if not audience or audience == "convex":
        # "convex" is the app's own session audience: a token minted for
        # MCP calls must never pass as a person's session.
        raise ConfigError(key, "must be set, and never 'convex'")
    return audience


def as_color(key: str, value: Any) -> str:
    color = as_str(key, value)
    if not re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", color):
        raise ConfigError(key, f"must be a #rgb or #rrggbb colour, got {color!r}")
    return color


# -- scopes and resources --------------------------------------------------


def as_scope_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigError(key, f"scopes must be a space-separated string or a list, got {value!r}")


def as_scope_includes(key: str, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A TOML table ``{ "mcp:admin" = ["mcp:read"] }``, or in the environment
    ``mcp:admin=mcp:read mcp:write, other=...``."""
    pairs: dict[str, tuple[str, ...]] = {}
    if isinstance(value, dict):
        for scope, included in value.items():
            pairs[str(scope)] = as_scope_list(key, included)
    elif isinstance(value, str):
        for item in as_list(key, value):
            scope, sep, included = item.partition("=")
            if not sep or not scope.strip():
                raise ConfigError(key, f"{item!r} must look like scope=included other")
            pairs[scope.strip()] = tuple(included.split())
    else:
        raise ConfigError(key, f"must be a table of scope = [included scopes], got {value!r}")
    return tuple(pairs.items())


def as_resources(key: str, value: Any) -> tuple[Resource, ...]:
    """Each item: a path on the public URL or an absolute URL, optionally
    followed by ``;mode=metadata-only``, ``;scopes=a b`` (required of every
    token) and ``;scopes_supported=c d`` (offered besides), or a TOML table
    with those keys and ``url``. The URLs are as written until
    :func:`place_resources` puts them on the public URL."""
    items = value if isinstance(value, list) else as_list(key, value)
    return tuple(_as_resource(key, item) for item in items)


def _as_resource(key: str, item: Any) -> Resource:
    options: dict[str, Any] = {}
    if isinstance(item, dict):
        options = dict(item)
        target = options.pop("url", None)
        if not isinstance(target, str):
            raise ConfigError(key, f"each table needs a url, got {item!r}")
        target = target.strip()
    elif isinstance(item, str):
        target, *parts = [p.strip() for p in item.split(";")]
        for part in parts:
            name, sep, val = part.partition("=")
            if not sep:
                raise ConfigError(key, f"{part!r} must look like mode=... or scopes=...")
            options[name.strip()] = val.strip()
    else:
        raise ConfigError(key, f"{item!r} must be a string or a table")
    unknown = set(options) - set(RESOURCE_OPTIONS)
    if unknown:
        raise ConfigError(key, f"unknown option {', '.join(sorted(unknown))} for {target!r}")
    mode = str(options.get("mode", "enforce")).lower()
    if mode not in RESOURCE_MODES:
        raise ConfigError(key, f"mode must be one of {', '.join(RESOURCE_MODES)}, got {mode!r}")
    scopes = as_scope_list(key, options.get("scopes", ""))
    supported = as_scope_list(key, options.get("scopes_supported", ""))
    if "offline_access" in scopes + supported:
        # MCP 2026-07-28 (SEP-2207): a resource SHOULD NOT advertise it;
        # refresh tokens are the server's business, not the resource's.
        raise ConfigError(key, f"{target!r}: offline_access is not a resource scope")
    return Resource(url=target, mode=mode, scopes=scopes, scopes_supported=supported)


def place_resources(
    key: str, resources: tuple[Resource, ...], public_url: str
) -> tuple[Resource, ...]:
    """Each resource's URL in canonical form, a path taken as one on
    ``public_url``; an enforced resource must be on it, and none listed twice."""
    placed = []
    for resource in resources:
        target = resource.url
        url = public_url + target if target.startswith("/") else target
        try:
            canonical = canonical_url(url)
        except InvalidURL as exc:
            raise ConfigError(key, f"{target!r}: {exc} (RFC 8707 section 2)") from None
        if resource.mode == "enforce" and not is_under(canonical, public_url):
            raise ConfigError(
                key,
                f"{target!r} is enforced but not on public_url {public_url}, so the sidecar "
                "never sees its requests; use mode=metadata-only where the resource checks "
                "tokens itself",
            )
        placed.append(dataclasses.replace(resource, url=canonical))
    urls = [r.url for r in placed]
    for url in urls:
        if urls.count(url) > 1:
            raise ConfigError(key, f"{url} is listed twice")
    return tuple(placed)
