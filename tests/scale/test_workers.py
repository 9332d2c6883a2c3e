"""Every core of one machine: `workers` serving processes on one port under
one supervisor, with real processes. Single use holds across workers, one
metrics listener adds their counters up, a dead worker is replaced, SIGTERM
drains them all, and a key rotation reaches every one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.config import ConfigError, load_settings
from tests.observability.test_metrics import metrics_of, value
from tests.scale.test_replicas import REDIRECT, post_all
from tools.processes import Process, start_sidecar


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def workers_serving(sidecar: Process) -> set[int]:
    return {int(r["worker"]) for r in sidecar.log_records() if r.get("event") == "request"}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def two_workers(upstream: Process) -> Iterator[Process]:
    process = start_sidecar(upstream.url, SIDECAR_WORKERS="2")
    yield process
    process.stop()


def test_two_workers_share_one_port_and_both_serve(two_workers: Process) -> None:
    deadline = time.monotonic() + 10
    while len(children_of(two_workers.popen.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children_of(two_workers.popen.pid)) == 2
    # A forked worker accepts once it has started: wait for both to say so,
    # or the first one alone may take every connection.
    while time.monotonic() < deadline:
        started = {
            r.get("worker")
            for r in two_workers.log_records()
            if r.get("event") == "sidecar started"
        }
        if started >= {0, 1}:
            break
        time.sleep(0.1)

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(
                *(
                    client.get(two_workers.url + "/echo", headers={"Connection": "close"})
                    for _ in range(200)
                )
            )

    assert {r.status_code for r in asyncio.run(many())} == {200}
    assert workers_serving(two_workers) == {0, 1}


def test_one_code_redeemed_a_hundred_times_across_workers_succeeds_once(
    two_workers: Process,
) -> None:
    from tools.oauth import mint_code_form

    client_id = httpx.post(
        two_workers.url + "/oauth/register", json={"redirect_uris": [REDIRECT]}
    ).json()["client_id"]
    form = mint_code_form(two_workers.extra["env"], client_id, REDIRECT)  # type: ignore[arg-type]
    responses = asyncio.run(post_all([(two_workers.url + "/oauth/token", form)] * 100))
    assert Counter(r.status_code for r in responses) == {200: 1, 400: 99}


def test_one_metrics_listener_adds_the_workers_counters_up(two_workers: Process) -> None:
    before = value(metrics_of(two_workers), "sidecar_requests_total", route="proxy", status="200")
    for _ in range(40):
        httpx.get(two_workers.url + "/echo", headers={"Connection": "close"})
    after = value(metrics_of(two_workers), "sidecar_requests_total", route="proxy", status="200")
    assert after - before == 40
    assert workers_serving(two_workers) == {0, 1}


def test_a_worker_that_dies_is_replaced(two_workers: Process) -> None:
    first = children_of(two_workers.popen.pid)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    now = first
    while time.monotonic() < deadline:
        now = children_of(two_workers.popen.pid)
        if len(now) == 2 and first[0] not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2
    assert first[0] not in now
    assert any(r.get("event") == "worker died; starting another" for r in two_workers.log_records())
    for _ in range(20):
        assert (
            httpx.get(two_workers.url + "/echo", headers={"Connection": "close"}).status_code == 200
        )


def test_sigterm_drains_every_worker_and_exits_zero(upstream: Process) -> None:
    sidecar = start_sidecar(upstream.url, SIDECAR_WORKERS="2")
    results: list[int] = []

    def slow() -> None:
        results.append(httpx.get(sidecar.url + "/slow?delay=1.5", timeout=10).status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    sidecar.popen.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(10)
    assert sidecar.popen.wait(15) == 0
    assert results == [200, 200, 200, 200]
    assert children_of(sidecar.popen.pid) == []


def test_a_key_rotation_reaches_every_worker(upstream: Process) -> None:
    sidecar = start_sidecar(upstream.url, SIDECAR_WORKERS="2")
    try:

        def key_counts() -> set[int]:
            """How many keys each of 100 concurrent fresh connections was
            shown (concurrent, so that both workers answer some)."""

            async def many() -> list[httpx.Response]:
                async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
                    return await asyncio.gather(
                        *(
                            client.get(sidecar.url + "/oauth/jwks", headers={"Connection": "close"})
                            for _ in range(100)
                        )
                    )

            return {len(r.json()["keys"]) for r in asyncio.run(many())}

        assert key_counts() == {1}
        env = dict(sidecar.extra["env"])  # type: ignore[arg-type]
        subprocess.run(
            [sys.executable, "-m", "sidecar", "keys", "rotate"],
            env=env,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 15
        counts = key_counts()
        while counts != {2} and time.monotonic() < deadline:
            time.sleep(0.5)
            counts = key_counts()
        assert counts == {2}
        assert workers_serving(sidecar) == {0, 1}
    finally:
        sidecar.stop()


def test_memory_store_with_several_workers_stops_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"SIDECAR_WORKERS": "2", "SIDECAR_STORE_URL": "memory://"})
    assert err.value.key == "workers"


def test_workers_default_to_one_and_auto_counts_usable_cpus() -> None:
    assert load_settings(env={}).workers == 1
    auto = load_settings(env={"SIDECAR_WORKERS": "auto"}).workers
    assert 1 <= auto <= len(os.sched_getaffinity(0))


def test_the_supervisor_never_starts_a_thread_so_every_fork_is_clean(two_workers: Process) -> None:
    # A fork copies only the forking thread: a lock another thread held at
    # that moment (a logging handler's, the metrics listener's) would stay
    # locked forever in the worker, including one forked to replace a dead one.
    assert metrics_of(two_workers)  # the metrics listener answers
    status = Path(f"/proc/{two_workers.popen.pid}/status").read_text()
    threads = next(line for line in status.splitlines() if line.startswith("Threads:"))
    assert threads.split()[1] == "1"
