"""What ``serve`` checks before it listens, which ``check-config`` runs too.

Each check fails with one line naming the key: a :class:`ConfigError` (exit
code 2) for a value that cannot work, a :class:`Refused` with its own code
for what the machine refuses at the moment (the port in use, the store not
answering: 3, as ``serve`` itself exits when start-up fails).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from pathlib import Path

from sidecar.config import ConfigError, Settings, check_serving

EXIT_STARTUP_FAILED = 3


class Refused(Exception):
    """A check that failed with an exit code of its own; ``message`` is the line."""

    def __init__(self, message: str, code: int = EXIT_STARTUP_FAILED) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


def before_serving(settings: Settings) -> None:
    """What ``serve`` checks itself before the server starts (the port and
    the store are the server's own checks)."""
    from sidecar.store import open_store

    try:
        open_store(settings.store_url)  # a URL the backend can use; not opened
    except ValueError as exc:
        raise ConfigError("store_url", str(exc)) from None
    check_serving(settings)
    data_dir_writable(settings)
    tls_files_load(settings)


def check_all(settings: Settings) -> None:
    """Every check ``serve`` runs before it listens, without serving: the
    keys load (a static JWKS decrypts with the secret), the data directory
    is writable, TLS files load, the store opens, the ports are free."""
    from sidecar.keys.keyset import check_keys

    before_serving(settings)
    check_keys(settings)
    store_opens(settings)
    ports_free(settings)


def data_dir_writable(settings: Settings) -> None:
    folder = Path(settings.data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            "data_dir",
            f"{folder.resolve()} cannot be created or written: {exc.strerror or exc}",
        ) from None


def tls_files_load(settings: Settings) -> None:
    if settings.tls_certfile:
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "tls_certfile",
                f"{settings.tls_certfile} with {settings.tls_keyfile} is not a usable "
                f"certificate and key: {exc}",
            ) from None
    if settings.upstream_ca_file:
        try:
            ssl.create_default_context(cafile=settings.upstream_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "upstream_ca_file", f"{settings.upstream_ca_file} is not a CA file: {exc}"
            ) from None


def store_opens(settings: Settings) -> None:
    """Open and close the store; a SQLite file this check made is removed."""
    from sidecar.store import StoreUnavailable, open_store
    from sidecar.store.sqlite import path_from_url

    url = settings.store_url
    made: Path | None = None
    if url.lower().startswith("sqlite://"):
        path = Path(path_from_url(url))
        made = None if path.exists() or str(path) == ":memory:" else path

    async def open_and_close() -> None:
        store = open_store(url)
        try:
            await store.open()
        finally:
            await store.close()

    try:
        asyncio.run(open_and_close())
    except ValueError as exc:
        raise ConfigError("store_url", str(exc)) from None
    except (StoreUnavailable, OSError) as exc:
        raise Refused(f"the store does not open: {exc}") from None
    finally:
        for leftover in (made, *(Path(f"{made}{s}") for s in ("-wal", "-shm"))) if made else ():
            if leftover is not None and leftover.exists():
                os.unlink(leftover)


def ports_free(settings: Settings) -> None:
    """Bind each listening port and let it go (0 picks a free one: nothing to check)."""
    listeners = [("port", settings.host, settings.port)]
    if settings.metrics_port:
        listeners.append(("metrics_port", settings.metrics_host, settings.metrics_port))
    for key, host, port in listeners:
        if not port:
            continue
        try:
            socket.create_server((host, port)).close()
        except OSError as exc:
            reason = "in use" if exc.errno == 98 else f"not available ({exc.strerror})"
            env = f"SIDECAR_{key.upper()}"
            raise Refused(
                f"port {port} is {reason} on {host}: set {key} ({env}) to a free port"
            ) from None
