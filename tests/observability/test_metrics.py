"""Metrics on their own listener: requests, tokens, upstream, store, keys."""

from __future__ import annotations

import re

import httpx

from tools.oauth import OAuthClient
from tools.processes import Process, free_port, running, signing_key_file, start_sidecar


def metrics_of(sidecar: Process) -> str:
    port = sidecar.extra["env"]["SIDECAR_METRICS_PORT"]  # type: ignore[index]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    return r.text


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_not_on_the_public_port(sidecar: Process) -> None:
    r = httpx.get(sidecar.url + "/metrics")
    assert "sidecar_requests_total" not in r.text  # the app's /metrics, proxied


def test_requests_upstream_tokens_store_and_keys_are_counted(upstream: Process) -> None:
    with running(start_sidecar(upstream.url)) as sidecar:
        before = metrics_of(sidecar)
        for _ in range(3):
            httpx.get(sidecar.url + "/echo")
        client = OAuthClient(sidecar.url)
        client.register()
        client.verifier = "v" * 43
        refused = client.exchange("not-a-code")
        assert refused.status_code == 400
        after = metrics_of(sidecar)
        assert (
            value(after, "sidecar_requests_total", route="proxy", status="200")
            - value(before, "sidecar_requests_total", route="proxy", status="200")
            == 3
        )
        assert (
            value(after, "sidecar_request_duration_seconds_count", route="proxy", status="200") >= 3
        )
        assert value(after, "sidecar_upstream_duration_seconds_count") >= 3
        assert value(after, "sidecar_tokens_total", event="refused", reason="invalid_grant") == 1
        assert value(after, "sidecar_store_duration_seconds_count", op="get") >= 1
        assert value(after, "sidecar_signing_keys") == 1
        assert re.search(r'sidecar_signing_key_age_seconds\{kid="[^"]+"\} \d', after)


def test_upstream_and_store_errors_are_counted() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    redis_gone = f"redis://127.0.0.1:{free_port()}/0"
    with running(
        start_sidecar(
            dead, SIDECAR_STORE_URL=redis_gone, SIDECAR_SIGNING_KEY_FILE=signing_key_file()
        )
    ) as sidecar:
        assert httpx.get(sidecar.url + "/x").status_code == 502
        assert (
            httpx.post(
                sidecar.url + "/oauth/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"]}
            ).status_code
            == 503
        )
        text = metrics_of(sidecar)
        assert value(text, "sidecar_upstream_errors_total", kind="bad_gateway") == 1
        assert value(text, "sidecar_store_errors_total", op="incr") >= 1
