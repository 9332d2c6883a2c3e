from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.processes import Process, free_port, start_better_auth, start_sidecar


@dataclass
class Stack:
    app: Process  # the real Better Auth + convex() server
    sidecar: Process  # the sidecar in front of it

    @property
    def site_url(self) -> str:
        return self.app.url


@pytest.fixture(scope="session")
def better_auth_stack() -> Iterator[Stack]:
    sidecar_port = free_port()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    app = start_better_auth(TRUSTED_ORIGINS=sidecar_url)
    try:
        sidecar = start_sidecar(app.url, port=sidecar_port)
    except Exception:
        app.stop()
        raise
    yield Stack(app, sidecar)
    sidecar.stop()
    app.stop()
