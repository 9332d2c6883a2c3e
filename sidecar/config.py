"""One frozen settings object, read from a TOML file with environment overrides.

Every key is declared once, as a field of :class:`Settings`: its default, the
parser that reads it (with its bounds), and its environment name when that is
not ``SIDECAR_<KEY>``. :func:`load_settings` parses each key given, then
applies the rules that tie keys together. Every key is documented in
``config/sidecar.example.toml``. A bad value raises :class:`ConfigError`
naming the key; the command line turns that into one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.config_parsers import (
    LOG_FORMATS,
    LOG_LEVELS,
    SCOPE_TOKEN,
    ConfigError,
    Network,
    Parser,
    Resource,
    as_bool,
    as_color,
    as_convex_audience,
    as_cors_origins,
    as_dir,
    as_file,
    as_header_prefix,
    as_hosts,
    as_image_link,
    as_issuer,
    as_jwks,
    as_link,
    as_login_url,
    as_networks,
    as_origin,
    as_path,
    as_resources,
    as_scope_includes,
    as_session_issuer,
    as_store_url,
    as_str,
    as_strings,
    as_workers,
    choice,
    integer,
    is_loopback_url,
    place_resources,
    same_machine,
    seconds,
    shown,
)
from sidecar.urls import InvalidURL, canonical_url, is_under


def setting(
    default: Any,
    parse: Parser,
    *,
    env: tuple[str, ...] = (),
    empty_is_default: bool = False,
    empty_is_error: bool = False,
    secret: bool = False,
) -> Any:
    """A configuration key: its default, the parser that reads a value given
    for it, the environment names that set it (the first found wins; none
    given: ``SIDECAR_<KEY>``), whether an empty value leaves the default (an
    empty environment variable always does, unless ``empty_is_error``: then
    its parser sees it), and whether ``check-config`` hides it."""
    metadata = {
        "parse": parse,
        "env": env,
        "empty_is_default": empty_is_default,
        "empty_is_error": empty_is_error,
        "secret": secret,
    }
    return field(default=default, metadata=metadata)


def _text(default: Any = None, **options: Any) -> Any:
    """A string key whose empty value leaves the default."""
    return setting(default, as_str, empty_is_default=True, **options)


@dataclass(frozen=True)
class Settings:
    # Where the app is and how clients see us.
    upstream_url: str = setting("http://127.0.0.1:3000", as_origin)
    # Filled from host and port (https with tls_certfile) when empty.
    public_url: str = setting("", as_origin, empty_is_default=True)
    host: str = setting("127.0.0.1", as_str)
    port: int = setting(8080, integer(0, 65535))
    # Serving processes on one port; "auto": the CPUs this process may use.
    workers: int = setting(1, as_workers)
    issuer: str = setting("", as_issuer, empty_is_default=True)  # empty: public_url + "/oauth"
    # State and keys. The environment names follow what the Convex deployment
    # and Better Auth read.
    # Everything the sidecar writes goes under data_dir: generated keys and
    # the default store, sqlite:///<data_dir>/sidecar.db (store_url empty).
    store_url: str = setting("", as_store_url, empty_is_default=True)
    data_dir: str = setting("./data", as_str)
    jwks: str | None = setting(
        None, as_jwks, env=("SIDECAR_JWKS", "JWKS"), empty_is_error=True, secret=True
    )
    better_auth_secret: str | None = _text(env=("BETTER_AUTH_SECRET",), secret=True)
    better_auth_secrets: str | None = _text(env=("BETTER_AUTH_SECRETS",), secret=True)
    signing_key_file: str | None = _text()
    # The app's Better Auth.
    session_issuer: str | None = setting(
        None,
        as_session_issuer,
        env=("SIDECAR_SESSION_ISSUER", "CONVEX_SITE_URL"),
        empty_is_default=True,
    )
    auth_base_path: str = setting("/api/auth", as_path)
    login_url: str = setting("/login", as_login_url)
    login_return_param: str = setting("callbackURL", as_str)
    session_cookie_prefix: str = setting("better-auth", as_str)
    # OAuth.
    resources: tuple[Resource, ...] = setting((), as_resources)
    access_token_ttl: int = setting(3600, integer(30, 86400))
    refresh_token_ttl: int = setting(30 * 86400, integer(60))
    # A just-rotated refresh token presented again within this many seconds
    # (a lost answer retried, two processes racing) gets the same successor;
    # later, or an older token, revokes the grant. 0: strict.
    refresh_reuse_grace_seconds: int = setting(30, integer(0, 300))
    code_ttl: int = setting(60, integer(5, 600))
    pending_authorization_ttl: int = setting(600, integer(1, 3600))
    # A grant rests on a live session: the app confirms it at most this often
    # per Better Auth session (0: every time).
    session_recheck_seconds: int = setting(60, integer(0, 900))
    scopes: tuple[str, ...] = setting(("openid", "profile", "email", "offline_access"), as_strings)
    default_scopes: tuple[str, ...] = setting(("openid", "profile", "email"), as_strings)
    # Scope hierarchies (MCP 2026-07-28: "servers MUST account for scope
    # hierarchies"): a granted scope also counts as each scope it includes.
    scope_includes: tuple[tuple[str, tuple[str, ...]], ...] = setting((), as_scope_includes)
    registration_rate_limit: int = setting(30, integer(0))
    # A dynamically registered client that never completes an authorization
    # is forgotten after this many seconds (0: kept forever).
    registration_unused_ttl: int = setting(86400, integer(0))
    # Limits on what one client can cost (README, "Security").
    # authorize and consent requests, and refused token requests, per IP per minute
    rate_limit_per_ip: int = setting(300, integer(0))
    # refused token requests per client per minute
    rate_limit_per_client: int = setting(600, integer(0))
    rate_limit_per_grant: int = setting(60, integer(0))  # refreshes of one grant per minute
    # List offline_access in the metadata's scopes_supported (it is accepted
    # either way); off, since clients that see it add prompt=consent too.
    advertise_offline_access: bool = setting(False, as_bool)
    # Hosted clients' egress addresses: no per-address limit at the token endpoint.
    trusted_client_egress: tuple[Network, ...] = setting((), as_networks)
    max_body_bytes: int = setting(65536, integer(1024))  # form bodies of the OAuth endpoints
    max_registration_bytes: int = setting(16384, integer(1024))
    max_redirect_uris: int = setting(20, integer(1, 1000))
    max_query_bytes: int = setting(8192, integer(256))  # on the sidecar's own routes
    # Request heads on own and guarded routes; upstream answer heads.
    max_header_bytes: int = setting(16384, integer(1024))
    body_timeout: float = setting(10.0, seconds(0.1))  # to receive a whole OAuth request body
    # An idle kept-alive connection is closed after this.
    idle_timeout: float = setting(15.0, seconds(1.0))
    header_timeout: float = setting(10.0, seconds(0.5))  # to receive the headers (slowloris)
    # Open connections at which a new request gets 503; 0: none.
    max_connections: int = setting(0, integer(0))
    # Gateway.
    identity_header_prefix: str = setting("X-Sidecar-", as_header_prefix)
    revocation_cache_seconds: float = setting(5.0, seconds(0.0))
    # Convex as the person: the token the gateway mints for Convex on every
    # verified request (<identity_header_prefix>Convex-Token), and whether the
    # client's own Authorization header goes on too (token passthrough).
    convex_audience: str = setting("convex-mcp", as_convex_audience)
    convex_token_ttl: int = setting(120, integer(10, 3600))
    forward_access_token: bool = setting(False, as_bool)
    # Origins whose pages may read the gateway's 401/403 (CORS); "*" for any.
    gateway_cors_origins: tuple[str, ...] = setting(("*",), as_cors_origins)
    # Plain http on a public_url or issuer that is not loopback is refused
    # unless this is set (MCP: every authorization server endpoint is https).
    allow_insecure_http: bool = setting(False, as_bool)
    # Client ID Metadata Documents: hosts that may be fetched even when they
    # are plain http or resolve to private or loopback addresses (tests, dev).
    cimd_allowed_hosts: tuple[str, ...] = setting((), as_hosts)
    # Proxy.
    trusted_proxies: tuple[Network, ...] = setting((), as_networks)
    preserve_host: bool = setting(False, as_bool)
    upstream_connect_timeout: float = setting(5.0, seconds(0.1))
    upstream_response_timeout: float = setting(60.0, seconds(0.1))
    upstream_pool_size: int = setting(512, integer(1, 100_000))
    # A private CA for an https upstream; else the system store.
    upstream_ca_file: str = setting("", as_file, empty_is_default=True)
    # TLS served by the sidecar itself (operators without an ingress). A
    # certificate replaced on disk is picked up without a restart.
    tls_certfile: str = setting("", as_file, empty_is_default=True)
    tls_keyfile: str = setting("", as_file, empty_is_default=True)
    # Strict-Transport-Security on its own answers over TLS; 0: off.
    hsts_max_age: int = setting(31536000, integer(0))
    shutdown_timeout: float = setting(30.0, seconds(0.0))
    # Pages a person sees (README, "Pages and branding").
    brand_name: str = setting("", as_str)  # shown on every page; empty: no name
    brand_logo_url: str = setting("", as_image_link, empty_is_default=True)  # https or data:
    # The accent (#rrggbb); empty: near-black, light in dark mode.
    brand_color: str = setting("", as_color, empty_is_default=True)
    terms_url: str = setting("", as_link, empty_is_default=True)
    privacy_url: str = setting("", as_link, empty_is_default=True)
    # Templates here override the shipped ones by name.
    templates_dir: str = setting("", as_dir, empty_is_default=True)
    # Observability.
    log_level: str = setting("info", choice(*LOG_LEVELS))
    log_format: str = setting("auto", choice(*LOG_FORMATS))
    access_log: bool = setting(True, as_bool)
    metrics_host: str = setting("127.0.0.1", as_str)
    metrics_port: int = setting(9464, integer(0, 65535))  # 0 turns the metrics listener off

    @property
    def serves_tls(self) -> bool:
        return bool(self.tls_certfile)

    @property
    def default_resource(self) -> Resource:
        """Where tokens go when a client names no resource: the first
        configured one, else the app's public origin as a whole."""
        return self.resources[0] if self.resources else Resource(self.public_url)

    @property
    def known_resources(self) -> tuple[Resource, ...]:
        """The resources tokens may be issued for: the configured ones, else
        the default one."""
        return self.resources or (self.default_resource,)

    def on_public_origin(self, resource: Resource) -> bool:
        return is_under(resource.url, self.public_url)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for display, secrets replaced."""
        return {
            f.name: shown(f.name, f.metadata["secret"], getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


KEYS: Mapping[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
SECRET_KEYS = frozenset(name for name, f in KEYS.items() if f.metadata["secret"])


def env_names(key: str) -> tuple[str, ...]:
    """The environment variables that set ``key``, the first found winning."""
    declared: tuple[str, ...] = KEYS[key].metadata["env"] if key in KEYS else ()
    return declared or (f"SIDECAR_{key.upper()}",)


def check_serving(settings: Settings) -> None:
    """What serving needs beyond what reading the keys or the clients does
    (``load_settings`` alone leaves it out): with a static JWKS, the issuer
    of the app's session JWTs; with a shared store, keys every replica
    shares (a key generated per replica would refuse the others' tokens)."""
    if settings.jwks and not settings.session_issuer:
        raise ConfigError(
            "session_issuer",
            "JWKS is set, so the session JWT issuer is "
            "needed too: set CONVEX_SITE_URL or SIDECAR_SESSION_ISSUER",
        )
    shared = settings.store_url.lower().startswith(("redis://", "rediss://", "redis+"))
    if shared and not (settings.jwks or settings.signing_key_file):
        raise ConfigError(
            "jwks",
            "not set, nor signing_key_file, with a shared store "
            f"({settings.store_url.split('://', 1)[0]}://): each replica would generate its "
            "own signing key and refuse the others' tokens; set JWKS and BETTER_AUTH_SECRET "
            "(reuse mode) or signing_key_file (one key file on every replica)",
        )


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from (lowest first) defaults, the TOML file, the
    environment, then explicit overrides (command-line options)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    given: dict[str, str] = {}  # key -> the environment variable that set it
    if config_file is None:
        config_file = env.get("SIDECAR_CONFIG") or None
    if config_file is not None:
        raw.update(_read_toml(Path(config_file)))
    for key, f in KEYS.items():
        for name in env_names(key):
            if name in env and (env[name] != "" or f.metadata["empty_is_error"]):
                raw[key] = env[name]
                given[key] = name
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            given.pop(key, None)
    try:
        return _build(raw)
    except ConfigError as exc:
        exc.env = exc.env or given.get(exc.key)
        raise


def unknown_environment(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``SIDECAR_*`` variable that sets no key (a typo the
    TOML file would refuse), naming the closest one."""
    import difflib

    env = os.environ if env is None else env
    known = {name for key in KEYS for name in env_names(key)} | {"SIDECAR_CONFIG"}
    warnings = []
    for name in sorted(env):
        if name.startswith("SIDECAR_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in KEYS:
            raise ConfigError(key, f"unknown key in {path}")
    return data


def _build(raw: Mapping[str, Any]) -> Settings:
    """Each key given parsed by its own parser, the rest left at the
    default; then the rules between keys, in order."""
    values: dict[str, Any] = {name: f.default for name, f in KEYS.items()}
    for name, f in KEYS.items():
        if name not in raw or (f.metadata["empty_is_default"] and not str(raw[name]).strip()):
            continue
        values[name] = f.metadata["parse"](name, raw[name])
    for rule in RULES:
        rule(values)
    return Settings(**values)


# -- the rules between keys ------------------------------------------------


def _public_url_and_issuer(values: dict[str, Any]) -> None:
    """public_url defaults to the listen address (https when serving TLS),
    the issuer to public_url + /oauth."""
    if not values["public_url"]:
        host, port = values["host"], values["port"]
        shown_host = f"[{host}]" if ":" in host else host
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else shown_host
        scheme = "https" if values["tls_certfile"] else "http"
        try:
            values["public_url"] = canonical_url(f"{scheme}://{shown_host}:{port}")
        except InvalidURL:
            raise ConfigError("host", f"is not a host name or address: {host!r}") from None
    if not values["issuer"]:
        values["issuer"] = values["public_url"] + "/oauth"


def _store_in_data_dir(values: dict[str, Any]) -> None:
    """One place for state: the default store is a file in data_dir."""
    if not values["store_url"]:
        values["store_url"] = f"sqlite:///{values['data_dir'].rstrip('/')}/sidecar.db"


def _issuer_served_here(values: dict[str, Any]) -> None:
    """The sidecar serves its metadata and endpoints on public_url only: an
    issuer on another origin names endpoints no one answers."""
    issuer, public = urlsplit(values["issuer"]), urlsplit(values["public_url"])
    if (issuer.scheme, issuer.netloc) != (public.scheme, public.netloc):
        raise ConfigError(
            "issuer",
            f"{values['issuer']} is not on public_url {values['public_url']}, where the "
            f"sidecar serves; leave it empty for {values['public_url']}/oauth",
        )


def _upstream_is_not_the_sidecar(values: dict[str, Any]) -> None:
    """A proxied request sent back to the sidecar itself loops until it times out."""
    upstream = urlsplit(values["upstream_url"])
    port = upstream.port or (443 if upstream.scheme == "https" else 80)
    own = values["port"] and port == values["port"]
    if own and same_machine(upstream.hostname or "", values["host"]):
        where = f"the sidecar's own listener {values['host']}:{values['port']}"
    elif values["upstream_url"] == values["public_url"]:
        where = "the sidecar's public_url"
    else:
        return
    raise ConfigError(
        "upstream_url",
        f"{values['upstream_url']} is {where}: every proxied request would come back to "
        "the sidecar; set it to the app's own address",
    )


def _resources_on_public_url(values: dict[str, Any]) -> None:
    values["resources"] = place_resources("resources", values["resources"], values["public_url"])


def _one_store_for_all_workers(values: dict[str, Any]) -> None:
    # Each process would hold its own memory: a code redeemed in one would
    # still be fresh in another.
    if values["workers"] > 1 and values["store_url"].lower().startswith("memory://"):
        raise ConfigError(
            "workers", "memory:// is per process; use sqlite:// or redis:// with several workers"
        )


def _scopes_offered(values: dict[str, Any]) -> None:
    """A scope a resource requires or offers is one the server offers: else a
    client that asks for what the 401 names could never get it. Each scope
    reaches the gateway's X-Sidecar-Scopes header, so it is an RFC 6749
    section 3.3 scope-token and nothing else; scope_includes names only
    offered scopes."""
    scopes: tuple[str, ...] = values["scopes"]
    for resource in values["resources"]:
        scopes += tuple(s for s in resource.advertised_scopes if s not in scopes)
    values["scopes"] = scopes
    for key in ("scopes", "default_scopes"):
        for name in values[key]:
            if SCOPE_TOKEN.fullmatch(name) is None:
                raise ConfigError(key, f"{name!r} is not a scope name (RFC 6749 section 3.3)")
    for scope, included in values["scope_includes"]:
        for name in (scope, *included):
            if name not in scopes:
                raise ConfigError(
                    "scope_includes",
                    f"{name!r} is not a scope the server offers (scopes, or a resource's)",
                )


def _https_off_loopback(values: dict[str, Any]) -> None:
    """MCP: every authorization server endpoint is https, loopback aside."""
    if values["allow_insecure_http"]:
        return
    for key in ("public_url", "issuer"):
        url = values[key]
        if url.startswith("http://") and not is_loopback_url(url):
            raise ConfigError(
                key,
                f"{url} is plain http on a host that is not loopback; MCP clients need "
                "https for every authorization server endpoint (set allow_insecure_http "
                "= true, SIDECAR_ALLOW_INSECURE_HTTP, only for a private test network)",
            )


def _tls_pair(values: dict[str, Any]) -> None:
    if bool(values["tls_certfile"]) != bool(values["tls_keyfile"]):
        missing = "tls_keyfile" if values["tls_certfile"] else "tls_certfile"
        raise ConfigError(missing, "tls_certfile and tls_keyfile go together")


RULES: tuple[Callable[[dict[str, Any]], None], ...] = (
    _store_in_data_dir,
    _public_url_and_issuer,
    _resources_on_public_url,
    _one_store_for_all_workers,
    _scopes_offered,
    _https_off_loopback,
    _issuer_served_here,
    _upstream_is_not_the_sidecar,
    _tls_pair,
)

__all__ = ["ConfigError", "Resource", "Settings", "check_serving", "env_names", "load_settings"]
