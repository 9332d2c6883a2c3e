"""Running the app under uvicorn: uvloop and httptools, graceful drain on SIGTERM."""

from __future__ import annotations

import signal
from types import FrameType

import structlog
import uvicorn

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.observability.logging import configure_logging
from sidecar.slow_clients import protocol_with_deadline


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_with_deadline(settings.header_timeout),
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
    )


class Server(uvicorn.Server):
    """uvicorn's server, but a drained shutdown ends with exit code 0.

    uvicorn re-raises SIGTERM after draining, so the process would end "killed
    by signal"; a sidecar that finished every in-flight request has exited
    cleanly, and orchestrators and `make run` should see that.
    """

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
    server = Server(uvicorn_config(settings))
    server.run()
    # 3, as uvicorn itself uses, when start-up (the lifespan) failed.
    return 0 if server.started else 3
