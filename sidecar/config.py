"""One frozen settings object, read from a TOML file with environment overrides.

Every key is documented in ``config/sidecar.example.toml``. A bad value raises
:class:`ConfigError` naming the key; the command line turns that into one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.urls import InvalidURL, canonical_url, is_under


class ConfigError(Exception):
    """A configuration value that cannot be used; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


RESOURCE_MODES = ("enforce", "metadata-only")


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


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
STORE_SCHEMES = ("sqlite", "memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


@dataclass(frozen=True)
class Settings:
    # Where the app is and how clients see us.
    upstream_url: str = "http://127.0.0.1:3000"
    public_url: str = ""  # filled from host and port when empty
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # serving processes on one port; "auto": the CPUs this process may use
    issuer: str = ""  # filled as public_url + "/oauth" when empty
    # State and keys.
    store_url: str = "sqlite:///./data/sidecar.db"
    data_dir: str = "./data"
    jwks: str | None = None
    better_auth_secret: str | None = None
    better_auth_secrets: str | None = None
    signing_key_file: str | None = None
    # The app's Better Auth.
    session_issuer: str | None = None
    auth_base_path: str = "/api/auth"
    login_url: str = "/login"
    login_return_param: str = "callbackURL"
    session_cookie_prefix: str = "better-auth"
    # OAuth.
    resources: tuple[Resource, ...] = ()
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 86400
    # A just-rotated refresh token presented again within this many seconds
    # (a lost answer retried, two processes racing) gets the same successor;
    # later, or an older token, revokes the grant. 0: strict.
    refresh_reuse_grace_seconds: int = 30
    code_ttl: int = 60
    pending_authorization_ttl: int = 600
    # A grant rests on a live session: the app confirms it at most this often
    # per Better Auth session (0: every time).
    session_recheck_seconds: int = 60
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    default_scopes: tuple[str, ...] = ("openid", "profile", "email")
    # Scope hierarchies (MCP 2026-07-28: "servers MUST account for scope
    # hierarchies"): a granted scope also counts as each scope it includes.
    scope_includes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    registration_rate_limit: int = 30
    # A dynamically registered client that never completes an authorization
    # is forgotten after this many seconds (0: kept forever).
    registration_unused_ttl: int = 86400
    # Limits on what one client can cost (README, "Security").
    # authorize and consent requests, and refused token requests, per IP per minute
    rate_limit_per_ip: int = 300
    rate_limit_per_client: int = 600  # refused token requests per client per minute
    rate_limit_per_grant: int = 60  # refreshes of one grant per minute
    # List offline_access in the metadata's scopes_supported (it is accepted
    # either way); off, since clients that see it add prompt=consent too.
    advertise_offline_access: bool = False
    # Hosted clients' egress addresses: no per-address limit at the token endpoint.
    trusted_client_egress: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 65536  # form bodies of the OAuth endpoints
    max_registration_bytes: int = 16384
    max_redirect_uris: int = 20
    max_query_bytes: int = 8192  # on the sidecar's own routes
    max_header_bytes: int = 16384  # request heads on own and guarded routes; upstream answer heads
    body_timeout: float = 10.0  # to receive a whole OAuth request body
    idle_timeout: float = 15.0  # an idle kept-alive connection is closed after this
    header_timeout: float = 10.0  # to receive a request's headers (slowloris)
    max_connections: int = 0  # open connections at which a new request gets 503; 0: none
    # Gateway.
    identity_header_prefix: str = "X-Sidecar-"
    revocation_cache_seconds: float = 5.0
    # Convex as the person: the token the gateway mints for Convex on every
    # verified request (<identity_header_prefix>Convex-Token), and whether the
    # client's own Authorization header goes on too (token passthrough).
    convex_audience: str = "convex-mcp"
    convex_token_ttl: int = 120
    forward_access_token: bool = False
    # Origins whose pages may read the gateway's 401/403 (CORS); "*" for any.
    gateway_cors_origins: tuple[str, ...] = ("*",)
    # Plain http on a public_url or issuer that is not loopback is refused
    # unless this is set (MCP: every authorization server endpoint is https).
    allow_insecure_http: bool = False
    # Client ID Metadata Documents: hosts that may be fetched even when they
    # are plain http or resolve to private or loopback addresses (tests, dev).
    cimd_allowed_hosts: tuple[str, ...] = ()
    # Proxy.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    preserve_host: bool = False
    upstream_connect_timeout: float = 5.0
    upstream_response_timeout: float = 60.0
    upstream_pool_size: int = 512
    upstream_ca_file: str = ""  # a private CA for an https upstream; else the system store
    # TLS served by the sidecar itself (operators without an ingress). A
    # certificate replaced on disk is picked up without a restart.
    tls_certfile: str = ""
    tls_keyfile: str = ""
    hsts_max_age: int = 31536000  # Strict-Transport-Security on its own answers over TLS; 0: off
    shutdown_timeout: float = 30.0
    # Pages a person sees (README, "Pages and branding").
    brand_name: str = ""  # shown on every page; empty: no name
    brand_logo_url: str = ""  # an https (or data:) image URL
    brand_color: str = ""  # the accent (#rrggbb); empty: near-black, light in dark mode
    terms_url: str = ""
    privacy_url: str = ""
    templates_dir: str = ""  # templates here override the shipped ones by name
    # Observability.
    log_level: str = "info"
    log_format: str = "auto"
    access_log: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 turns the metrics listener off

    @property
    def serves_tls(self) -> bool:
        return bool(self.tls_certfile)

    @property
    def default_resource(self) -> Resource:
        """Where tokens go when a client names no resource: the first
        configured one, else the app's public origin as a whole."""
        return self.resources[0] if self.resources else Resource(self.public_url)

    def on_public_origin(self, resource: Resource) -> bool:
        return is_under(resource.url, self.public_url)

    def resource_scopes(self) -> set[str]:
        """Scopes that belong to some resource, not to the server as a whole."""
        scopes: set[str] = set()
        for resource in self.resources:
            scopes |= set(resource.advertised_scopes)
        return self.expand_scopes(scopes)

    def expand_scopes(self, scopes: set[str] | list[str] | tuple[str, ...]) -> set[str]:
        """The scopes granted ones stand for, through ``scope_includes``."""
        includes = dict(self.scope_includes)
        seen: set[str] = set()
        todo = list(scopes)
        while todo:
            scope = todo.pop()
            if scope not in seen:
                seen.add(scope)
                todo.extend(includes.get(scope, ()))
        return seen

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for display, secrets replaced."""
        shown: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_KEYS and value:
                value = "<redacted>"
            elif f.name == "resources":
                value = [
                    {
                        "url": r.url,
                        "mode": r.mode,
                        "scopes": list(r.scopes),
                        "scopes_supported": list(r.scopes_supported),
                    }
                    for r in value
                ]
            elif f.name == "scope_includes":
                value = {scope: list(included) for scope, included in value}
            elif f.name in ("trusted_proxies", "trusted_client_egress"):
                value = [str(n) for n in value]
            elif isinstance(value, tuple):
                value = list(value)
            shown[f.name] = value
        return shown


SECRET_KEYS = frozenset({"jwks", "better_auth_secret", "better_auth_secrets"})

# Environment names for keys whose variable is not SIDECAR_<KEY>. The first
# name found wins; these follow what the Convex deployment and Better Auth read.
ENV_ALIASES: Mapping[str, tuple[str, ...]] = {
    "jwks": ("SIDECAR_JWKS", "JWKS"),
    "better_auth_secret": ("BETTER_AUTH_SECRET",),
    "better_auth_secrets": ("BETTER_AUTH_SECRETS",),
    "session_issuer": ("SIDECAR_SESSION_ISSUER", "CONVEX_SITE_URL"),
}


def env_names(key: str) -> tuple[str, ...]:
    return ENV_ALIASES.get(key, (f"SIDECAR_{key.upper()}",))


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Settings)}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from (lowest first) defaults, the TOML file, the
    environment, then explicit overrides (command-line options)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if config_file is None:
        config_file = env.get("SIDECAR_CONFIG") or None
    if config_file is not None:
        raw.update(_read_toml(Path(config_file)))
    known = _field_names()
    for key in known:
        for name in env_names(key):
            if name in env and env[name] != "":
                raw[key] = env[name]
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return _build(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    known = _field_names()
    for key in data:
        if key not in known:
            raise ConfigError(key, f"unknown key in {path}")
    return data


# -- parsing ---------------------------------------------------------------


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value.strip()


def _as_int(key: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
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


def _as_float(key: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}") from None
    if number != number or number < minimum:  # NaN or too small
        raise ConfigError(key, f"must be at least {minimum}, got {value!r}")
    return number


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _as_list(key: str, value: Any) -> list[str]:
    """A TOML array of strings, or a comma-separated string (environment)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ConfigError(key, f"must be a list of strings, got {value!r}")


def _as_origin(key: str, value: Any) -> str:
    """An http(s) origin: scheme and host (and port), no path, query or fragment."""
    text = _as_str(key, value)
    try:
        return canonical_url(text, allow_path=False)
    except InvalidURL as exc:
        raise ConfigError(
            key, f"must be an http(s) origin without path, query or user: {exc}"
        ) from None


def _as_path(key: str, value: Any) -> str:
    text = _as_str(key, value)
    if not text.startswith("/") or "?" in text or "#" in text:
        raise ConfigError(key, f"must be an absolute path like /api/auth, got {text!r}")
    return text.rstrip("/") or "/"


def _as_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = _as_str(key, value).lower()
    if text not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {text!r}")
    return text


def _as_store_url(key: str, value: Any) -> str:
    text = _as_str(key, value)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            key, f"must start with one of {', '.join(STORE_SCHEMES)}://, got {text!r}"
        )
    return text


def _as_networks(key: str, value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in _as_list(key, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(key, f"{item!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def _as_scope_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigError(key, f"scopes must be a space-separated string or a list, got {value!r}")


RESOURCE_OPTIONS = ("mode", "scopes", "scopes_supported")
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _as_resources(key: str, value: Any, public_url: str) -> tuple[Resource, ...]:
    """Each item: a path on the public URL or an absolute URL, optionally
    followed by ``;mode=metadata-only``, ``;scopes=a b`` (required of every
    token) and ``;scopes_supported=c d`` (offered besides), or a TOML table
    with those keys and ``url``."""
    items = value if isinstance(value, list) else _as_list(key, value)
    resources = []
    for item in items:
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
        scopes = _as_scope_list(key, options.get("scopes", ""))
        supported = _as_scope_list(key, options.get("scopes_supported", ""))
        if "offline_access" in scopes + supported:
            # MCP 2026-07-28 (SEP-2207): a resource SHOULD NOT advertise it;
            # refresh tokens are the server's business, not the resource's.
            raise ConfigError(key, f"{target!r}: offline_access is not a resource scope")
        url = public_url + target if target.startswith("/") else target
        try:
            canonical = canonical_url(url)
        except InvalidURL as exc:
            raise ConfigError(key, f"{target!r}: {exc} (RFC 8707 section 2)") from None
        if mode == "enforce" and not is_under(canonical, public_url):
            raise ConfigError(
                key,
                f"{target!r} is enforced but not on public_url {public_url}, so the sidecar "
                "never sees its requests; use mode=metadata-only where the resource checks "
                "tokens itself",
            )
        resources.append(
            Resource(url=canonical, mode=mode, scopes=scopes, scopes_supported=supported)
        )
    urls = [r.url for r in resources]
    for url in urls:
        if urls.count(url) > 1:
            raise ConfigError(key, f"{url} is listed twice")
    return tuple(resources)


def _as_scope_includes(key: str, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A TOML table ``{ "mcp:admin" = ["mcp:read"] }``, or in the environment
    ``mcp:admin=mcp:read mcp:write, other=...``."""
    pairs: dict[str, tuple[str, ...]] = {}
    if isinstance(value, dict):
        for scope, included in value.items():
            pairs[str(scope)] = _as_scope_list(key, included)
    elif isinstance(value, str):
        for item in _as_list(key, value):
            scope, sep, included = item.partition("=")
            if not sep or not scope.strip():
                raise ConfigError(key, f"{item!r} must look like scope=included other")
            pairs[scope.strip()] = tuple(included.split())
    else:
        raise ConfigError(key, f"must be a table of scope = [included scopes], got {value!r}")
    return tuple(pairs.items())


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


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build(raw: Mapping[str, Any]) -> Settings:
    defaults = Settings()
    values: dict[str, Any] = {}

    def take(key: str, parse: Callable[[str, Any], Any]) -> None:
        if key in raw:
            values[key] = parse(key, raw[key])

    take("upstream_url", _as_origin)
    take("host", _as_str)
    take("port", lambda k, v: _as_int(k, v, 0, 65535))
    if "workers" in raw:
        value = raw["workers"]
        if isinstance(value, str) and value.strip().lower() == "auto":
            values["workers"] = usable_cpus()
        else:
            values["workers"] = _as_int("workers", value, 1, 256)
    host = values.get("host", defaults.host)
    port = values.get("port", defaults.port)
    if "public_url" in raw and str(raw["public_url"]).strip():
        values["public_url"] = _as_origin("public_url", raw["public_url"])
    else:
        shown_host = f"[{host}]" if ":" in host else host
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else shown_host
        scheme = "https" if str(raw.get("tls_certfile", "")).strip() else "http"
        try:
            values["public_url"] = canonical_url(f"{scheme}://{shown_host}:{port}")
        except InvalidURL:
            raise ConfigError("host", f"is not a host name or address: {host!r}") from None
    public_url = values["public_url"]

    if "issuer" in raw and str(raw["issuer"]).strip():
        try:
            issuer = canonical_url(_as_str("issuer", raw["issuer"]))
        except InvalidURL as exc:
            raise ConfigError("issuer", f"{exc} (RFC 8414 section 2)") from None
        if urlsplit(issuer).path != "/oauth":
            raise ConfigError(
                "issuer", f"must be <origin>/oauth, the sidecar's namespace, got {issuer!r}"
            )
        values["issuer"] = issuer
    else:
        values["issuer"] = public_url + "/oauth"

    take("store_url", _as_store_url)
    store = values.get("store_url", defaults.store_url)
    if values.get("workers", 1) > 1 and store.lower().startswith("memory://"):
        # Each process would hold its own memory: a code redeemed in one
        # would still be fresh in another.
        raise ConfigError(
            "workers", "memory:// is per process; use sqlite:// or redis:// with several workers"
        )
    take("data_dir", _as_str)
    for key in ("jwks", "better_auth_secret", "better_auth_secrets", "signing_key_file"):
        if key in raw and str(raw[key]).strip():
            values[key] = _as_str(key, raw[key])
    if "session_issuer" in raw and str(raw["session_issuer"]).strip():
        values["session_issuer"] = _as_str("session_issuer", raw["session_issuer"]).rstrip("/")
    take("auth_base_path", _as_path)
    if "login_url" in raw:
        login = _as_str("login_url", raw["login_url"])
        if not (login.startswith("/") or login.startswith(("http://", "https://"))):
            raise ConfigError("login_url", f"must be a path or an http(s) URL, got {login!r}")
        values["login_url"] = login
    if "resources" in raw:
        values["resources"] = _as_resources("resources", raw["resources"], public_url)
    take("access_token_ttl", lambda k, v: _as_int(k, v, 30, 86400))
    take("refresh_token_ttl", lambda k, v: _as_int(k, v, 60))
    take("refresh_reuse_grace_seconds", lambda k, v: _as_int(k, v, 0, 300))
    take("registration_unused_ttl", lambda k, v: _as_int(k, v, 0))
    take("code_ttl", lambda k, v: _as_int(k, v, 5, 600))
    take("pending_authorization_ttl", lambda k, v: _as_int(k, v, 1, 3600))
    take("session_recheck_seconds", lambda k, v: _as_int(k, v, 0, 900))
    if "scopes" in raw:
        values["scopes"] = tuple(_as_list("scopes", raw["scopes"]))
    # A scope a resource requires or offers is one the server offers: else a
    # client that asks for what the 401 names could never get it.
    scopes = values.get("scopes", defaults.scopes)
    for resource in values.get("resources", ()):
        scopes += tuple(s for s in resource.advertised_scopes if s not in scopes)
    values["scopes"] = scopes
    # RFC 6749 section 3.3: scope-token = 1*NQCHAR. A scope reaches the
    # gateway's X-Sidecar-Scopes header, so nothing else may be in one.
    for name in (*scopes, *values.get("default_scopes", ())):
        if SCOPE_TOKEN.fullmatch(name) is None:
            raise ConfigError("scopes", f"{name!r} is not a scope name (RFC 6749 section 3.3)")
    if "scope_includes" in raw:
        includes = _as_scope_includes("scope_includes", raw["scope_includes"])
        for scope, included in includes:
            for name in (scope, *included):
                if name not in scopes:
                    raise ConfigError(
                        "scope_includes",
                        f"{name!r} is not a scope the server offers (scopes, or a resource's)",
                    )
        values["scope_includes"] = includes
    if "default_scopes" in raw:
        values["default_scopes"] = tuple(_as_list("default_scopes", raw["default_scopes"]))
    take("registration_rate_limit", lambda k, v: _as_int(k, v, 0))
    take("rate_limit_per_ip", lambda k, v: _as_int(k, v, 0))
    take("rate_limit_per_client", lambda k, v: _as_int(k, v, 0))
    take("rate_limit_per_grant", lambda k, v: _as_int(k, v, 0))
    take("trusted_client_egress", _as_networks)
    take("max_body_bytes", lambda k, v: _as_int(k, v, 1024))
    take("max_registration_bytes", lambda k, v: _as_int(k, v, 1024))
    take("max_redirect_uris", lambda k, v: _as_int(k, v, 1, 1000))
    take("max_query_bytes", lambda k, v: _as_int(k, v, 256))
    take("max_header_bytes", lambda k, v: _as_int(k, v, 1024))
    take("body_timeout", lambda k, v: _as_float(k, v, 0.1))
    take("idle_timeout", lambda k, v: _as_float(k, v, 1.0))
    take("header_timeout", lambda k, v: _as_float(k, v, 0.5))
    take("max_connections", lambda k, v: _as_int(k, v, 0))
    take("login_return_param", _as_str)
    if "identity_header_prefix" in raw:
        prefix = _as_str("identity_header_prefix", raw["identity_header_prefix"])
        if not prefix or not all(c.isalnum() or c == "-" for c in prefix):
            raise ConfigError("identity_header_prefix", "must be letters, digits and dashes")
        values["identity_header_prefix"] = prefix
    take("revocation_cache_seconds", lambda k, v: _as_float(k, v, 0.0))
    if "convex_audience" in raw:
        audience = _as_str("convex_audience", raw["convex_audience"])
        if not audience or audience == "convex":
            # "convex" is the app's own session audience: a token minted for
            # MCP calls must never pass as a person's session.
            raise ConfigError("convex_audience", "must be set, and never 'convex'")
        values["convex_audience"] = audience
    take("convex_token_ttl", lambda k, v: _as_int(k, v, 10, 3600))
    take("forward_access_token", _as_bool)
    take("advertise_offline_access", _as_bool)
    if "gateway_cors_origins" in raw:
        origins = _as_list("gateway_cors_origins", raw["gateway_cors_origins"])
        if [o.lower() for o in origins] == ["none"]:  # the environment's way to say []
            origins = []
        try:
            values["gateway_cors_origins"] = tuple(
                o if o == "*" else canonical_url(o, allow_path=False) for o in origins
            )
        except InvalidURL as exc:
            raise ConfigError(
                "gateway_cors_origins", f"each must be an origin or *: {exc}"
            ) from None
    take("allow_insecure_http", _as_bool)
    if not values.get("allow_insecure_http", defaults.allow_insecure_http):
        for key in ("public_url", "issuer"):
            url = values[key]
            if url.startswith("http://") and not _is_loopback_url(url):
                raise ConfigError(
                    key,
                    f"{url} is plain http on a host that is not loopback; MCP clients need "
                    "https for every authorization server endpoint (set allow_insecure_http "
                    "= true, SIDECAR_ALLOW_INSECURE_HTTP, only for a private test network)",
                )
    if "cimd_allowed_hosts" in raw:
        values["cimd_allowed_hosts"] = tuple(
            h.lower() for h in _as_list("cimd_allowed_hosts", raw["cimd_allowed_hosts"])
        )
    take("session_cookie_prefix", _as_str)
    take("trusted_proxies", _as_networks)
    take("preserve_host", _as_bool)
    take("upstream_connect_timeout", lambda k, v: _as_float(k, v, 0.1))
    take("upstream_response_timeout", lambda k, v: _as_float(k, v, 0.1))
    take("upstream_pool_size", lambda k, v: _as_int(k, v, 1, 100_000))
    for key in ("upstream_ca_file", "tls_certfile", "tls_keyfile"):
        if key in raw and str(raw[key]).strip():
            path = _as_str(key, raw[key])
            if not Path(path).is_file():
                raise ConfigError(key, f"{path} is not a readable file")
            values[key] = path
    if bool(values.get("tls_certfile")) != bool(values.get("tls_keyfile")):
        missing = "tls_keyfile" if values.get("tls_certfile") else "tls_certfile"
        raise ConfigError(missing, "tls_certfile and tls_keyfile go together")
    take("hsts_max_age", lambda k, v: _as_int(k, v, 0))
    take("shutdown_timeout", lambda k, v: _as_float(k, v, 0.0))
    take("brand_name", _as_str)
    for key in ("brand_logo_url", "terms_url", "privacy_url"):
        if key in raw and str(raw[key]).strip():
            link = _as_str(key, raw[key])
            if not link.startswith(("https://", "http://", "/")) and not (
                key == "brand_logo_url" and link.startswith("data:image/")
            ):
                raise ConfigError(key, f"must be an http(s) URL or a path, got {link!r}")
            values[key] = link
    if "brand_color" in raw and str(raw["brand_color"]).strip():
        color = _as_str("brand_color", raw["brand_color"])
        if not re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", color):
            raise ConfigError("brand_color", f"must be a #rgb or #rrggbb colour, got {color!r}")
        values["brand_color"] = color
    if "templates_dir" in raw and str(raw["templates_dir"]).strip():
        folder = _as_str("templates_dir", raw["templates_dir"])
        if not Path(folder).is_dir():
            raise ConfigError("templates_dir", f"{folder} is not a directory")
        values["templates_dir"] = folder
    take("log_level", lambda k, v: _as_choice(k, v, LOG_LEVELS))
    take("log_format", lambda k, v: _as_choice(k, v, LOG_FORMATS))
    take("access_log", _as_bool)
    take("metrics_host", _as_str)
    take("metrics_port", lambda k, v: _as_int(k, v, 0, 65535))
    return dataclasses.replace(defaults, **values)


__all__ = ["ConfigError", "Resource", "Settings", "env_names", "load_settings"]
