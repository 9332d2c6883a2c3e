"""Bodies stream both ways and long responses flush as they arrive."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import httpx
import pytest

from tools.processes import Process, running, start_sidecar, start_upstream
from tools.upstream_app import PATTERN

MiB = 1024 * 1024


def pattern_stream(total: int, chunk: int = 256 * 1024):  # type: ignore[no-untyped-def]
    block = (PATTERN * (chunk // len(PATTERN) + 1))[:chunk]
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


@pytest.mark.slow
def test_256_mib_each_way_streams_with_flat_memory() -> None:
    # A sidecar of its own so earlier tests do not colour the memory figure.
    with running(start_upstream()) as upstream, running(start_sidecar(upstream.url)) as sidecar:
        # Warm up: pools, imports and the first buffers are allocated once.
        httpx.post(sidecar.url + "/echo", content=pattern_stream(4 * MiB)).raise_for_status()
        with httpx.stream("GET", sidecar.url + f"/download?size={4 * MiB}") as r:
            for _ in r.iter_raw():
                pass
        baseline = sidecar.rss_kib()

        total = 256 * MiB
        expected = hashlib.sha256()
        for piece in pattern_stream(total):
            expected.update(piece)
        up = httpx.post(sidecar.url + "/echo", content=pattern_stream(total), timeout=120)
        assert up.status_code == 200
        assert up.json()["body_size"] == total
        assert up.json()["body_sha256"] == expected.hexdigest()

        received = 0
        with httpx.stream("GET", sidecar.url + f"/download?size={total}", timeout=120) as r:
            for chunk in r.iter_raw():
                received += len(chunk)
        assert received == total

        peak_growth_mib = (sidecar.peak_rss_kib() - baseline) / 1024
        # Buffering either body whole would add at least 256 MiB.
        print(f"peak growth {peak_growth_mib:.1f} MiB")
        assert peak_growth_mib < 48, f"sidecar memory grew by {peak_growth_mib:.1f} MiB"


def test_chunked_uploads_are_streamed_upstream(sidecar: Process) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for i in range(50):
            yield f"chunk-{i};".encode()

    seen = httpx.post(sidecar.url + "/echo", content=chunks()).json()
    assert seen["body_size"] == sum(len(f"chunk-{i};") for i in range(50))
    names = [name for name, _ in seen["headers"]]
    assert "transfer-encoding" in names  # re-chunked, since there is no length


def test_expect_100_continue_is_answered_before_the_body_is_sent(sidecar: Process) -> None:
    body = b"x" * 1000
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = s.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b" 200 OK" in data.split(b"\r\n", 1)[0] or b"200 OK" in data
    assert b'"body_size": 1000' in data
    assert b"expect" not in data.split(b"\r\n\r\n", 1)[1].lower()


def test_server_sent_events_reach_the_client_before_the_upstream_finishes(
    sidecar: Process, upstream: Process
) -> None:
    with httpx.stream("GET", sidecar.url + "/sse", timeout=10) as response:
        lines = response.iter_lines()
        first = next(lines)
        # The upstream is still holding the stream open: it sends nothing more
        # until released, so a buffering proxy could never have shown this.
        assert first == "data: first"
        httpx.get(upstream.url + "/release")
        rest = [line for line in lines if line]
    assert rest == ["data: second"]


def test_a_client_that_disconnects_cancels_its_upstream_request(
    sidecar: Process, upstream: Process
) -> None:
    before = httpx.get(upstream.url + "/state").json()
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
        s.sendall(b"GET /stream-forever HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"tick 0" in s.recv(4096) + s.recv(4096)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = httpx.get(upstream.url + "/state").json()
        if state["stream_disconnects"] > before["stream_disconnects"]:
            break
        time.sleep(0.1)
    assert state["stream_disconnects"] == before["stream_disconnects"] + 1
    assert state["stream_finished"] == before["stream_finished"]


def test_a_client_that_leaves_before_the_upstream_answers_cancels_its_request(
    upstream: Process,
) -> None:
    # A response timeout far beyond the wait below, so that only the
    # client's leaving can end the upstream request in time.
    with running(start_sidecar(upstream.url, SIDECAR_UPSTREAM_RESPONSE_TIMEOUT="60")) as sidecar:
        before = httpx.get(upstream.url + "/state").json()
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
            s.sendall(b"GET /think HTTP/1.1\r\nHost: x\r\n\r\n")
            started = _wait_for(upstream, "think_started", before["think_started"] + 1)
            assert started["think_started"] == before["think_started"] + 1
        # The upstream, still thinking, sees its request dropped.
        state = _wait_for(upstream, "think_disconnects", before["think_disconnects"] + 1)
        assert state["think_disconnects"] == before["think_disconnects"] + 1


def _wait_for(upstream: Process, key: str, value: int) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        state: dict[str, int] = httpx.get(upstream.url + "/state").json()
        if state[key] >= value or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_concurrent_streams_do_not_block_each_other(sidecar: Process) -> None:
    results: list[int] = []

    def fetch() -> None:
        with httpx.stream("GET", sidecar.url + f"/download?size={2 * MiB}") as r:
            results.append(sum(len(c) for c in r.iter_raw()))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [2 * MiB] * 8
