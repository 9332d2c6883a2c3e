"""The ``sidecar`` command: serve, check-config (and the OAuth subcommands).

Configuration mistakes end the process with one line on stderr naming the key
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sidecar.config import ConfigError, Settings, env_names, load_settings, unknown_environment

if TYPE_CHECKING:
    from sidecar.store import Store

EXIT_CONFIG = 2


def _config_args(parser: argparse.ArgumentParser, *, create: bool = False) -> None:
    """--config, before or after the subcommand (a subcommand's default never
    hides the one given before it); --create where a store may be made."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration file (SIDECAR_CONFIG)",
    )
    if create:
        parser.add_argument(
            "--create",
            action="store_true",
            default=argparse.SUPPRESS,
            help="start a new empty SQLite store (or generated key) where none is yet",
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convex-oauth-sidecar")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="OAuth 2.1 for MCP clients in front of a Better Auth + Convex app.",
    )
    parser.add_argument(
        "--version", action="version", version=f"sidecar {_version()}", help="print the version"
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (SIDECAR_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    check = sub.add_parser(
        "check-config",
        help="run every check serve runs before it listens, then print the effective configuration",
    )
    _config_args(check)
    convex = sub.add_parser(
        "convex-auth-config",
        help="print the convex/auth.config.ts provider entry that accepts the Convex tokens",
    )
    _config_args(convex)
    convex.add_argument("--json", action="store_true", help="the provider entries as JSON")
    _keys_parser(sub)
    _clients_parser(sub)
    _doctor_parser(sub)
    _grants_parser(sub)
    return parser


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the sidecar")
    _config_args(serve)
    serve.add_argument("--host", help="listen address (SIDECAR_HOST)")
    serve.add_argument("--port", type=int, help="listen port (SIDECAR_PORT)")
    serve.add_argument(
        "--upstream", dest="upstream_url", help="the app's origin (SIDECAR_UPSTREAM_URL)"
    )
    serve.add_argument(
        "--public-url", dest="public_url", help="the origin clients see (SIDECAR_PUBLIC_URL)"
    )
    serve.add_argument(
        "--workers", help="serving processes on one port, or auto (SIDECAR_WORKERS; default 1)"
    )


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="signing keys")
    _config_args(keys, create=True)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    listing = keys_sub.add_parser("list", help="the published keys and which one signs")
    rotate = keys_sub.add_parser("rotate", help="add a key that signs from now on (own-key mode)")
    for leaf in (listing, rotate):
        _config_args(leaf, create=True)


def _clients_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = sub.add_parser("clients", help="pre-registered OAuth clients")
    _config_args(clients, create=True)
    clients_sub = clients.add_subparsers(dest="clients_command", required=True)
    add = clients_sub.add_parser("add", help="register a client; prints its id (and secret)")
    add.add_argument("--name", required=True, help="the client's name, shown on the consent page")
    add.add_argument(
        "--redirect-uri",
        action="append",
        required=True,
        dest="redirect_uris",
        help="where the client receives its codes (repeat for several)",
    )
    add.add_argument(
        "--confidential", action="store_true", help="issue a secret (client_secret_basic)"
    )
    add.add_argument(
        "--jwks-uri",
        default=None,
        help="the client authenticates with private_key_jwt (RFC 7523), its public keys here",
    )
    add.add_argument("--scope", default=None, help="pin the client to these scopes")
    add.add_argument(
        "--token-exchange",
        action="store_true",
        help="may exchange access tokens for Convex tokens (RFC 8693; needs --confidential)",
    )
    listing = clients_sub.add_parser("list", help="list registered clients")
    remove = clients_sub.add_parser("remove", help="remove a client")
    remove.add_argument("client_id", help="the client to remove")
    prune = clients_sub.add_parser(
        "prune",
        help="forget self-registered clients never used (registration_unused_ttl)",
    )
    for leaf in (add, listing, remove, prune):
        _config_args(leaf, create=True)


def _doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor", help="check a deployment from outside, as MCP clients meet it: a checklist"
    )
    doctor.add_argument(
        "url", help="the MCP URL people paste, e.g. https://app.example.com/api/mcp"
    )
    doctor.add_argument("--json", action="store_true", help="the checklist as data")
    doctor.add_argument(
        "--config",
        nargs="?",
        const="",
        metavar="FILE",
        help="also compare with the sidecar's own configuration, read as `sidecar serve` reads "
        "it (this TOML file, else SIDECAR_CONFIG, and the SIDECAR_* environment): its "
        "auth_base_path, login_return_param, public_url, issuer, and session_issuer and JWKS "
        "kids against what the app publishes; without it the session issuer is not compared",
    )
    doctor.add_argument(
        "--session-issuer",
        help="the issuer the sidecar expects in the app's session JWTs (its session_issuer / "
        "CONVEX_SITE_URL), compared with the app's convex/.well-known/openid-configuration",
    )
    doctor.add_argument(
        "--auth-base-path", help="Better Auth's base path (default: the config's, else /api/auth)"
    )
    doctor.add_argument("--login-return-param", help="default: the config's, else callbackURL")
    doctor.add_argument("--ca-file", help="trust this CA (a private one) for https")


def _grants_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    grants = sub.add_parser("grants", help="what people have granted to clients")
    _config_args(grants, create=True)
    grants_sub = grants.add_subparsers(dest="grants_command", required=True)
    listing = grants_sub.add_parser("list", help="live grants, one a line")
    listing.add_argument("--user", help="only this Better Auth user id's")
    listing.add_argument("--client", help="only this client's")
    revoke = grants_sub.add_parser(
        "revoke", help="end grants: their refresh and access tokens, and the remembered consent"
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("grant_id", nargs="?", help="one grant")
    which.add_argument("--user", help="every grant of this Better Auth user id")
    which.add_argument("--client", help="every grant of this client")
    for leaf in (listing, revoke):
        _config_args(leaf, create=True)


def _load(args: argparse.Namespace) -> Settings:
    overrides = {
        key: getattr(args, key, None)
        for key in ("host", "port", "upstream_url", "public_url", "workers")
    }
    for warning in unknown_environment():
        print(f"sidecar: warning: {warning}", file=sys.stderr)
    return load_settings(args.config, overrides=overrides)


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"sidecar: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return _doctor(args)  # from anywhere: needs no configuration of its own
    from sidecar.preflight import Refused

    try:
        settings = _load(args)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "check-config":
            from sidecar.preflight import check_all

            check_all(settings)
            print(json.dumps(settings.redacted(), indent=2))
            return 0
        if args.command == "convex-auth-config":
            from sidecar.convex import auth_config_snippet, providers
            from sidecar.keys import load_keyset

            keyset = load_keyset(settings)
            if args.json:
                print(json.dumps(providers(settings, keyset), indent=2))
            else:
                print(auth_config_snippet(settings, keyset))
            return 0
        if args.command == "keys":
            return _keys(settings, args)
        if args.command == "clients":
            return asyncio.run(_clients(settings, args))
        if args.command == "grants":
            return asyncio.run(_grants(settings, args))
    except ConfigError as exc:
        names = exc.env or (" / ".join(env_names(exc.key)) if exc.key != "config" else "--config")
        return fail(f"configuration error: {exc.key} ({names}): {exc.message}")
    except Refused as exc:
        return fail(exc.message, exc.code)
    return fail(f"unknown command {args.command!r}")


def _serve(settings: Settings) -> int:
    from sidecar.preflight import before_serving

    before_serving(settings)
    if settings.workers > 1:
        from sidecar.runtime.workers import serve_workers

        return serve_workers(settings)
    from sidecar.runtime.server import serve

    return serve(settings)


def _operator_store(settings: Settings, args: argparse.Namespace) -> Store:
    """The store an operator command works on, named on stderr; a SQLite file
    that is not there yet is refused unless --create (an empty store opened by
    mistake, from another directory, answers every question with nothing)."""
    from pathlib import Path

    from sidecar.preflight import Refused
    from sidecar.store import open_store
    from sidecar.store.sqlite import path_from_url

    url = settings.store_url
    shown = url.split("://", 1)[0] + "://" + url.split("://", 1)[1].rpartition("@")[2]
    if url.lower().startswith("sqlite://"):
        path = Path(path_from_url(url)).resolve()
        if not path.exists() and not getattr(args, "create", False):
            raise Refused(
                f"no store at {path} (store_url (SIDECAR_STORE_URL) {url}): run where the "
                "sidecar keeps its state or pass --config; --create starts an empty one",
                EXIT_CONFIG,
            )
        shown = f"{url} ({path})"
    print(f"sidecar: store {shown}", file=sys.stderr)
    try:
        return open_store(url)
    except ValueError as exc:
        raise ConfigError("store_url", str(exc)) from None


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.keys import load_keyset
    from sidecar.keys.keyset import keys_file, rotate_managed_keys

    if settings.jwks:
        print("sidecar: keys from JWKS (reuse mode)", file=sys.stderr)
    elif settings.signing_key_file:
        print(f"sidecar: keys from signing_key_file {settings.signing_key_file}", file=sys.stderr)
    else:
        path = keys_file(settings).resolve()
        if not path.exists() and not getattr(args, "create", False):
            return fail(
                f"no generated keys at {path} (data_dir (SIDECAR_DATA_DIR) "
                f"{settings.data_dir}): run where the sidecar keeps its state or pass "
                "--config; --create generates the first key"
            )
        print(f"sidecar: keys from {path}", file=sys.stderr)
    if args.keys_command == "rotate":
        if settings.jwks or settings.signing_key_file:
            return fail(
                "keys rotate manages generated keys only; with JWKS or signing_key_file, "
                "rotate those values instead (see deploy/README.md)",
                1,
            )
        new = rotate_managed_keys(settings)
        print(
            f"new signing key {new['kid']}: a running sidecar signs with it within seconds; "
            f"older keys stay published for {settings.access_token_ttl + 60} s"
        )
        return 0
    keyset = load_keyset(settings)
    print(f"mode: {keyset.mode}")
    for key in keyset.published:
        marker = "signing" if key["kid"] == keyset.signing.kid else "published"
        print(f"{key['kid']}\t{key['alg']}\t{marker}")
    return 0


async def _clients(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.oauth.client_model import client_from_metadata
    from sidecar.oauth.clients import ClientRegistry
    from sidecar.oauth.errors import OAuthError

    store = _operator_store(settings, args)
    await store.open()
    try:
        registry = ClientRegistry(store)
        if args.clients_command == "add":
            metadata: dict[str, Any] = {
                "client_name": args.name,
                "redirect_uris": args.redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "client_secret_basic"
                if args.confidential
                else "none",
            }
            if args.jwks_uri:
                if args.confidential:
                    return fail("--jwks-uri and --confidential are two ways to authenticate", 1)
                metadata["token_endpoint_auth_method"] = "private_key_jwt"
                metadata["jwks_uri"] = args.jwks_uri
            if args.scope:
                metadata["scope"] = args.scope
            if args.token_exchange and not (args.confidential or args.jwks_uri):
                return fail(
                    "--token-exchange needs --confidential or --jwks-uri (an authenticated client)",
                    1,
                )
            try:
                client, secret = client_from_metadata(metadata, settings.scopes, source="cli")
            except OAuthError as exc:
                return fail(f"{exc.error}: {exc.description}", 1)
            client.token_exchange = args.token_exchange
            await registry.add(client)
            print(f"client_id: {client.client_id}")
            if secret:
                print(f"client_secret: {secret}  (shown once; store it now)")
            return 0
        if args.clients_command == "list":
            for client in await registry.all():
                print(
                    f"{client.client_id}\t{client.source}\t{client.token_endpoint_auth_method}"
                    f"\t{client.client_name or '-'}\t{' '.join(client.redirect_uris)}"
                )
            return 0
        if args.clients_command == "prune":
            if not settings.registration_unused_ttl:
                print("registration_unused_ttl is 0: registrations are kept; nothing pruned")
                return 0
            from sidecar.oauth.grants import Grants
            from sidecar.store.shape import migrate

            grants = Grants(settings, store)
            await migrate(store, grants.migrations())
            # What each self-registered client holds is read from its own
            # collection, never from every grant.
            holding = {
                c.client_id
                for c in await registry.all()
                if c.source == "dcr" and await grants.grants_of_client(c.client_id)
            }
            removed = await registry.prune(settings.registration_unused_ttl, holding)
            for client_id in removed:
                print(f"removed {client_id}")
            print(f"pruned {len(removed)} unused client{'s' if len(removed) != 1 else ''}")
            return 0
        if args.clients_command == "remove":
            if await registry.remove(args.client_id):
                print(f"removed {args.client_id}")
                return 0
            return fail(f"no client {args.client_id}", 1)
    finally:
        await store.close()
    return 1


def _doctor(args: argparse.Namespace) -> int:
    import ssl

    from sidecar.doctor import diagnose

    verify: ssl.SSLContext | bool = True
    if args.ca_file:
        try:
            verify = ssl.create_default_context(cafile=args.ca_file)
        except OSError as exc:
            return fail(f"cannot read --ca-file {args.ca_file}: {exc.strerror}", 2)
    report = diagnose(
        args.url,
        config=args.config,
        session_issuer=args.session_issuer,
        auth_base_path=args.auth_base_path,
        login_return_param=args.login_return_param,
        verify=verify,
    )
    print(report.json() if args.json else report.text())
    return 0 if report.ok else 1


async def _grants(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from sidecar.oauth.grants import Grants
    from sidecar.store import StoreUnavailable
    from sidecar.store.shape import migrate

    store = _operator_store(settings, args)
    try:
        await store.open()
        grants = Grants(settings, store)
        await migrate(store, grants.migrations())
        if getattr(args, "grant_id", None):
            one = await grants.live_grant(args.grant_id)
            if one is None:
                return fail(f"no live grant {args.grant_id}", 1)
            found = [one]
        elif args.user:
            found = await grants.grants_of(args.user)
        elif args.client:
            found = await grants.grants_of_client(args.client)
        else:
            found = await grants.all_grants()
        if args.client:
            found = [g for g in found if g.client_id == args.client]
        if args.grants_command == "list":
            for g in found:
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(g.created))
                print(
                    f"{g.grant_id}\t{g.sub}\t{g.client_id}\t{' '.join(g.scope)}"
                    f"\t{g.resource}\t{created}"
                )
            return 0
        for g in found:
            await grants.end_grant(g)
        print(f"revoked {len(found)} grant{'s' if len(found) != 1 else ''}")
        return 0
    except StoreUnavailable as exc:
        return fail(f"the store is unavailable: {exc}", 1)
    finally:
        await store.close()


def run() -> Any:  # pragma: no cover - console script
    sys.exit(main())
