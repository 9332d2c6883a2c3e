"""The process: start-up log, probes, graceful drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tools.processes import Process, free_port, running, sidecar_env, start_sidecar


def test_start_up_logs_where_it_listens_and_where_it_proxies(upstream: Process) -> None:
    with running(start_sidecar(upstream.url)) as sidecar:
        started = [r for r in sidecar.log_records() if r.get("event") == "sidecar started"]
        assert started
        assert started[0]["upstream"] == upstream.url
        assert started[0]["public_url"] == sidecar.url
        assert any(
            f"127.0.0.1:{sidecar.port}" in str(r.get("event")) for r in sidecar.log_records()
        )


def test_liveness_and_readiness_answer_under_the_oauth_namespace(sidecar: Process) -> None:
    live = httpx.get(sidecar.url + "/oauth/healthz")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    ready = httpx.get(sidecar.url + "/oauth/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    # The app's own /healthz, /health and /ready stay the app's.
    for path in ("/healthz", "/readyz", "/health"):
        assert httpx.get(sidecar.url + path).headers.get("content-type") == "application/json"
    assert httpx.get(sidecar.url + "/healthz").json()["error"] == "not_found"


def test_every_request_gets_one_access_log_line(sidecar: Process) -> None:
    httpx.get(sidecar.url + "/echo/access-log-probe", headers={"X-Request-Id": "access-log-0001"})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [
            r
            for r in sidecar.log_records()
            if r.get("request_id") == "access-log-0001" and r.get("event") == "request"
        ]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "proxy"
    assert line["method"] == "GET"
    assert line["path"] == "/echo/access-log-probe"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert isinstance(line["upstream_ms"], float)
    assert line["upstream_ms"] <= line["duration_ms"]


def test_requests_that_finish_together_each_get_one_whole_access_line(sidecar: Process) -> None:
    # Under concurrency each request still gets one whole JSON line of its own.
    ids = [f"together-{i:04d}" for i in range(64)]
    with httpx.Client(limits=httpx.Limits(max_connections=32)) as client:
        threads = [
            threading.Thread(
                target=client.get,
                args=(sidecar.url + "/small",),
                kwargs={"headers": {"X-Request-Id": i}},
            )
            for i in ids
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen = [r["request_id"] for r in sidecar.log_records() if r.get("event") == "request"]
        if set(ids) <= set(seen):
            break
        time.sleep(0.05)
    assert sorted(i for i in seen if i in set(ids)) == ids
    torn = [line for line in sidecar.log_text().splitlines() if line.count('"event":') > 1]
    assert torn == []


def test_sigterm_drains_in_flight_requests_then_exits(upstream: Process) -> None:
    sidecar = start_sidecar(upstream.url)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["response"] = httpx.get(sidecar.url + "/slow?delay=1.5", timeout=10)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.4)  # the request is in flight upstream
    sidecar.popen.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # No longer accepting new connections.
    refused = False
    try:
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=1):
            pass
    except OSError:
        refused = True
    thread.join(10)
    code = sidecar.popen.wait(10)
    assert refused
    assert "error" not in result, result
    response = result["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.json() == {"slow": True}
    assert code == 0


def test_a_metrics_port_clash_exits_3_naming_the_listener_and_the_key(upstream: Process) -> None:
    import socket as socket_module
    import subprocess
    import sys

    from tools.processes import free_port, sidecar_env

    with socket_module.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = sidecar_env(
            upstream.url, free_port(), SIDECAR_METRICS_PORT=str(taken.getsockname()[1])
        )
        import os

        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "serve"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 3
    assert '"start-up failed"' in result.stderr
    assert f"127.0.0.1:{env['SIDECAR_METRICS_PORT']}" in result.stderr
    assert "SIDECAR_METRICS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_log_line_orjson_refuses_is_still_written() -> None:
    import json

    import structlog

    from sidecar.observability.logging import _dumps

    render = structlog.processors.JSONRenderer(serializer=_dumps)
    line = render(None, "warning", {"event": "odd values", "counts": {1: "x"}, "big": 2**70})
    assert json.loads(line) == {"event": "odd values", "counts": {"1": "x"}, "big": 2**70}


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real `sidecar serve`, run until it exits by itself."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_naming_the_key_and_exit_3(
    upstream: Process, workers: str
) -> None:
    # With several workers the supervisor binds the socket itself.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_once(sidecar_env(upstream.url, port, SIDECAR_WORKERS=workers))
    output = result.stderr + result.stdout
    assert result.returncode == 3, output
    naming = [line for line in output.splitlines() if "port (SIDECAR_PORT)" in line]
    assert len(naming) == 1, output
    assert json.loads(naming[0])["error"] == (
        f"port {port} is in use on 127.0.0.1: set port (SIDECAR_PORT) to a free port"
    )
    assert '"start-up failed"' in naming[0]
    # Nothing started, so nothing around it: no traceback, no bind error of
    # uvicorn's, no "sidecar started" or "stopped" either side of it.
    assert "Traceback" not in output
    assert "error while attempting to bind" not in output
    assert "Errno" not in output
    for said in ("sidecar started", "Waiting for application startup", "sidecar stopped"):
        assert said not in output


def test_sidecar_started_is_said_once_it_listens(upstream: Process) -> None:
    with running(start_sidecar(upstream.url)) as sidecar:
        events = [str(r.get("event")) for r in sidecar.log_records()]
    listening = next(i for i, e in enumerate(events) if e.startswith("Uvicorn running on"))
    started = events.index("sidecar started")
    assert listening < started
    assert events.count("sidecar started") == 1
    assert "Application startup complete." in events[:started]


def warnings_naming(sidecar: Process, key: str, within: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + within
    while True:
        found = [
            r for r in sidecar.log_records() if r.get("level") == "warning" and key in json.dumps(r)
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_no_resource_configured_is_a_warning_at_start(upstream: Process) -> None:
    with running(start_sidecar(upstream.url)) as bare:
        warned = warnings_naming(bare, "resources (SIDECAR_RESOURCES)")
    assert len(warned) == 1
    assert "MCP clients have nothing to ask for" in str(warned[0]["event"])
    with running(start_sidecar(upstream.url, SIDECAR_RESOURCES="/api/mcp")) as configured:
        assert warnings_naming(configured, "SIDECAR_RESOURCES", within=0.5) == []


def test_an_upstream_that_does_not_answer_at_start_is_a_warning_not_a_failure() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    # start_sidecar returns once /oauth/healthz answers: start-up completed.
    with running(start_sidecar(nowhere)) as sidecar:
        assert time.monotonic() - began < 20
        warned = warnings_naming(sidecar, "upstream_url (SIDECAR_UPSTREAM_URL)")
        assert httpx.get(sidecar.url + "/oauth/healthz").status_code == 200
    assert len(warned) == 1
    assert warned[0]["upstream"] == nowhere
    assert warned[0]["error"]


def test_an_upstream_that_answers_at_start_is_no_warning(upstream: Process) -> None:
    with running(start_sidecar(upstream.url)) as sidecar:
        time.sleep(0.5)
        assert warnings_naming(sidecar, "SIDECAR_UPSTREAM_URL", within=0) == []
