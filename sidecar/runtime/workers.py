"""``workers``: several serving processes on one port under one supervisor.

The supervisor binds the listening socket once and forks the workers, each a
whole sidecar (its own event loop, upstream pool and store connection) that
accepts on the shared socket. It replaces a worker that dies, forwards
SIGTERM so that every worker drains its in-flight requests, and serves the one
metrics listener, adding up the workers' counters with prometheus-client's
multiprocess mode. State that must hold across workers lives in the store, as
across replicas: every store but ``memory://`` is shared (config refuses that
one with several workers).

Why not uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``, in
the pinned uvicorn): it cannot keep what this one promises.

- Its workers are ``multiprocessing`` *spawn* processes: fresh interpreters
  that unpickle the ``uvicorn.Config``, so the app must be an import string
  and is built again in each from scratch. The settings of ``sidecar serve``
  (flags, ``--config``) would have to travel another way, and nothing the
  supervisor prepared before forking is inherited: the allocator settings,
  the key generated once so that workers never race to make it.
- Each of its workers starts a thread to answer health pings, and its loop
  blocks its one thread on those pings (up to ``timeout_worker_healthcheck``
  seconds each) and on ``Event.wait``: there is no turn left in which to
  answer a metrics scrape from that thread, and a second thread is what a
  fork must never copy (see ``Supervisor.run``).
- It takes over SIGHUP, SIGTTIN, SIGTTOU (restart, add, remove workers): a
  behaviour ``sidecar serve`` has not had.
- A worker that cannot start stops it without an exit status (``run``
  returns None; uvicorn's CLI exits 3 only for one process), where this one
  exits 3; and a replacement gets no worker number for its log lines, nor is
  the dead worker's metrics file marked dead.

So the fork, the reaping loop and the metrics listener stay here; the
serving inside each worker is uvicorn's ``Server`` (sidecar/runtime/server.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog

from sidecar.config import Settings
from sidecar.observability.logging import bind_process_context
from sidecar.runtime.allocator import tune_malloc
from sidecar.runtime.listen import EXIT_STARTUP_FAILED, ListenError, bind_listeners

RESPAWN_PAUSE = 0.5  # seconds between a worker's death and its replacement
METRICS_POLL = 0.2  # seconds a wait for a scrape lasts before workers are reaped


class WSGIServerV6(WSGIServer):
    address_family = socket.AF_INET6


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not requests worth a log line


def serve_workers(settings: Settings) -> int:
    # prometheus-client picks its value store when first imported: the
    # multiprocess directory must be set before anything imports it.
    metrics_dir = tempfile.mkdtemp(prefix="sidecar-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from sidecar.keys import load_keyset
    from sidecar.observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    tune_malloc()  # inherited by every worker forked from here
    log = structlog.get_logger("sidecar")
    # A generated key is made here, once, before any worker could race to.
    load_keyset(settings)
    try:
        # One line naming the key for a port in use, as with one process.
        listeners = bind_listeners(settings.host, settings.port, backlog=2048)
    except ListenError as exc:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.error("start-up failed", error=str(exc))
        return EXIT_STARTUP_FAILED
    supervisor = Supervisor(settings, listeners, metrics_dir)
    try:
        return supervisor.run()
    finally:
        for listener in listeners:
            listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("sidecar stopped", workers=settings.workers)


class Supervisor:
    def __init__(
        self, settings: Settings, listeners: list[socket.socket], metrics_dir: str
    ) -> None:
        self.settings = settings
        self.listeners = listeners
        self.metrics_dir = metrics_dir
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self.log = structlog.get_logger("sidecar")
        self.metrics: WSGIServer | None = None

    def run(self) -> int:
        # No thread is started in this process, ever: a fork copies only the
        # forking thread, so a lock another thread held (a logging handler's,
        # the allocator's) would stay locked in every worker, including one
        # forked later to replace a dead one. The metrics listener is served
        # from this process's one thread, between reaping workers.
        try:
            self.metrics = self.bind_metrics()
        except OSError as exc:
            from sidecar.observability.metrics import metrics_listener_error

            host, port = self.settings.metrics_host, self.settings.metrics_port
            self.log.error("start-up failed", error=metrics_listener_error(host, port, exc))
            return EXIT_STARTUP_FAILED
        for number in range(self.settings.workers):
            self.spawn(number)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.log.info(
            "sidecar supervising workers",
            workers=self.settings.workers,
            listen=f"{self.settings.host}:{self.settings.port}",
        )
        code = 0
        try:
            while self.workers:
                try:
                    pid, status = self.next_exit()
                except ChildProcessError:
                    break
                if pid not in self.workers:
                    continue
                number = self.workers.pop(pid)
                self.forget_metrics(pid)
                exit_code = os.waitstatus_to_exitcode(status)
                if self.stopping:
                    continue
                if exit_code == EXIT_STARTUP_FAILED:
                    # A worker that cannot start would fail again: stop all.
                    self.log.error("a worker failed to start; stopping", worker=number)
                    code = EXIT_STARTUP_FAILED
                    self.stop(signal.SIGTERM, None)
                    continue
                self.log.warning("worker died; starting another", worker=number, code=exit_code)
                time.sleep(RESPAWN_PAUSE)
                self.spawn(number)
        finally:
            if self.metrics is not None:
                self.metrics.server_close()
        return code

    def next_exit(self) -> tuple[int, int]:
        """The next worker to exit (pid, wait status); scrapes are answered
        while waiting for it."""
        if self.metrics is None:
            return os.waitpid(-1, 0)
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                return pid, status
            self.metrics.handle_request()  # waits at most METRICS_POLL seconds

    def spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = self.worker(number)
            finally:
                os._exit(code)
        self.workers[pid] = number

    def worker(self, number: int) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.metrics is not None:
            self.metrics.socket.close()  # the supervisor's listener, not ours
        from sidecar.runtime.server import Server, uvicorn_config

        # The supervisor serves the one metrics listener for all of them.
        settings = dataclasses.replace(self.settings, metrics_port=0)
        bind_process_context(worker=number)
        server = Server(uvicorn_config(settings))
        server.run(sockets=self.listeners)
        return 0 if server.started else EXIT_STARTUP_FAILED

    def stop(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.log.info(
                "shutting down: draining every worker", signal=signal.Signals(signum).name
            )
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def bind_metrics(self) -> WSGIServer | None:
        if not self.settings.metrics_port:
            return None
        from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        server_class = WSGIServerV6 if ":" in self.settings.metrics_host else WSGIServer
        server = server_class(
            (self.settings.metrics_host, self.settings.metrics_port), QuietHandler
        )
        server.set_app(make_wsgi_app(registry))
        server.timeout = METRICS_POLL
        return server

    def forget_metrics(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
