"""Running the app under uvicorn: uvloop and httptools, graceful drain on
SIGTERM, and TLS of its own whose certificate is reloaded when replaced."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from types import FrameType

import structlog
import uvicorn

from sidecar.app import SidecarApp, create_app
from sidecar.config import Settings
from sidecar.expiring import watch_files
from sidecar.observability.logging import configure_logging
from sidecar.runtime.allocator import tune_malloc
from sidecar.runtime.listen import EXIT_STARTUP_FAILED, ListenError, bind_listeners
from sidecar.runtime.protocol import sidecar_protocol


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=sidecar_protocol(settings.header_timeout),
        ws="websockets-sansio",
        lifespan="on",
        # X-Forwarded-* are handled by the proxy against trusted_proxies;
        # uvicorn's own handling would rewrite the peer address first.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        # SIGTERM: stop accepting, let in-flight requests finish, then exit.
        timeout_graceful_shutdown=round(settings.shutdown_timeout),
        timeout_keep_alive=max(1, round(settings.idle_timeout)),
        limit_concurrency=settings.max_connections or None,
        ssl_certfile=settings.tls_certfile or None,
        ssl_keyfile=settings.tls_keyfile or None,
    )


CERT_CHECK_EVERY = 2.0  # seconds, as for the signing key file


async def watch_certificate(config: uvicorn.Config, certfile: str, keyfile: str) -> None:
    """A certificate renewed on disk (certbot, cert-manager) takes effect for
    new connections without a restart: OpenSSL hands each new connection the
    context's current certificate."""
    log = structlog.get_logger("sidecar")

    def reload() -> None:
        if config.ssl is None:
            return
        try:
            config.ssl.load_cert_chain(certfile, keyfile)
        except (OSError, ValueError) as exc:  # a half-written pair: keep serving the old one
            log.warning("TLS certificate not reloaded", error=str(exc))
            return
        log.info("TLS certificate reloaded", certfile=certfile)

    await watch_files([certfile, keyfile], reload, CERT_CHECK_EVERY)


class Server(uvicorn.Server):
    """uvicorn's server, but a drained shutdown ends with exit code 0, and
    "sidecar started" is said once it listens.

    uvicorn re-raises SIGTERM after draining, so the process would end "killed
    by signal"; a sidecar that finished every in-flight request has exited
    cleanly, and orchestrators and `make run` should see that.

    ``announce``: say where it listens (uvicorn's "Uvicorn running on" line),
    as uvicorn does only for sockets it bound itself; a supervisor's workers
    leave that to the supervisor.
    """

    def __init__(self, config: uvicorn.Config, *, announce: bool = False) -> None:
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets is not None and self.announce:
            self._log_started_message(sockets)
        if self.started and isinstance(self.config.app, SidecarApp):
            self.config.app.log_started()
        settings_cert = getattr(self.config, "ssl_certfile", None)
        if self.started and settings_cert and self.config.ssl is not None:
            self._cert_watch = asyncio.create_task(
                watch_certificate(self.config, str(settings_cert), str(self.config.ssl_keyfile))
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        watch = getattr(self, "_cert_watch", None)
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            structlog.get_logger("sidecar").info(
                "shutting down: no new connections, draining in-flight requests",
                signal=signal.Signals(sig).name,
                timeout_s=self.config.timeout_graceful_shutdown,
            )
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    tune_malloc()
    config = uvicorn_config(settings)
    try:
        # Bound before the app starts: a port in use is one line, no more.
        sockets = bind_listeners(settings.host, settings.port, config.backlog)
    except ListenError as exc:
        structlog.get_logger("sidecar").error("start-up failed", error=str(exc))
        return EXIT_STARTUP_FAILED
    server = Server(config, announce=True)
    server.run(sockets=sockets)
    # 3, as uvicorn itself uses, when start-up (the lifespan) failed.
    return 0 if server.started else EXIT_STARTUP_FAILED
