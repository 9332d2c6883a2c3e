"""An upstream that is away, slow or drops connections gives clean errors."""

from __future__ import annotations

import httpx

from tests.support.stale_server import StaleServer
from tools.processes import Process, free_port, running, start_sidecar


def test_unreachable_upstream_answers_502_with_json_and_request_id() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running(start_sidecar(dead)) as sidecar:
        response = httpx.get(sidecar.url + "/anything", headers={"X-Request-Id": "rid-502-test"})
        assert response.status_code == 502
        assert response.json() == {
            "error": "bad_gateway",
            "error_description": "the upstream app is unreachable",
            "request_id": "rid-502-test",
        }
        assert "Traceback" not in sidecar.log_text()
        # The warning written while serving it carries the same request id.
        warnings = [r for r in sidecar.log_records() if r.get("event") == "upstream error"]
        assert [r.get("request_id") for r in warnings] == ["rid-502-test"]


def test_slow_upstream_answers_504_with_json(upstream: Process) -> None:
    with running(start_sidecar(upstream.url, SIDECAR_UPSTREAM_RESPONSE_TIMEOUT="0.3")) as sidecar:
        response = httpx.get(sidecar.url + "/slow?delay=2", timeout=10)
        assert response.status_code == 504
        body = response.json()
        assert body["error"] == "gateway_timeout"
        assert body["request_id"] == response.headers["x-request-id"]
        # A fast answer on the same sidecar is unaffected.
        assert httpx.get(sidecar.url + "/slow?delay=0.01").status_code == 200
        assert "Traceback" not in sidecar.log_text()


def test_a_long_upload_is_not_cut_off_by_the_response_timeout(upstream: Process) -> None:
    import time

    def slow_body():  # type: ignore[no-untyped-def]
        for _ in range(6):
            time.sleep(0.15)  # 0.9 s in all, three times the timeout
            yield b"x" * 1000

    with running(start_sidecar(upstream.url, SIDECAR_UPSTREAM_RESPONSE_TIMEOUT="0.3")) as sidecar:
        response = httpx.post(sidecar.url + "/echo", content=slow_body(), timeout=10)
        assert response.status_code == 200
        assert response.json()["body_size"] == 6000


def test_a_stale_keep_alive_connection_is_retried_once_for_idempotent_requests() -> None:
    with StaleServer().running() as stale, running(start_sidecar(stale.url)) as sidecar:
        with httpx.Client() as client:
            assert client.get(sidecar.url + "/first").status_code == 200
            # The pooled connection is now stale; the GET is retried on a new one.
            second = client.get(sidecar.url + "/second")
        assert second.status_code == 200
        assert stale.requests_dropped == 1
        assert stale.requests_answered == 2


def test_a_post_on_a_stale_connection_is_not_retried() -> None:
    with StaleServer().running() as stale, running(start_sidecar(stale.url)) as sidecar:
        with httpx.Client() as client:
            assert client.get(sidecar.url + "/first").status_code == 200
            second = client.post(sidecar.url + "/second", content=b"once only")
        assert second.status_code == 502
        assert stale.requests_dropped == 1
        assert stale.requests_answered == 1
