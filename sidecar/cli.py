"""The ``sidecar`` command: serve, check-config (and the OAuth subcommands).

Configuration mistakes end the process with one line on stderr naming the key
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from sidecar.config import ConfigError, Settings, env_names, load_settings
from sidecar.keys import KeyError_

EXIT_CONFIG = 2


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="OAuth 2.1 for MCP clients in front of a Better Auth + Convex app.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sidecar")
    _config_args(serve)
    serve.add_argument("--host", help="listen address (SIDECAR_HOST)")
    serve.add_argument("--port", type=int, help="listen port (SIDECAR_PORT)")
    serve.add_argument("--upstream", dest="upstream_url", help="the app's origin")
    serve.add_argument("--public-url", dest="public_url", help="the origin clients see")

    check = sub.add_parser("check-config", help="print the effective configuration")
    _config_args(check)
    return parser


def _load(args: argparse.Namespace) -> Settings:
    overrides = {
        key: getattr(args, key, None) for key in ("host", "port", "upstream_url", "public_url")
    }
    return load_settings(args.config, overrides=overrides)


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"sidecar: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _load(args)
        if args.command == "serve":
            from sidecar.server import serve

            return serve(settings)
        if args.command == "check-config":
            print(json.dumps(settings.redacted(), indent=2))
            return 0
    except (ConfigError, KeyError_) as exc:
        names = " / ".join(env_names(exc.key)) if exc.key != "config" else "--config"
        return fail(f"configuration error: {exc.key} ({names}): {exc.message}")
    return fail(f"unknown command {args.command!r}")


def run() -> Any:  # pragma: no cover - console script
    sys.exit(main())
