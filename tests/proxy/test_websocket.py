"""WebSocket upgrades pass through both ways."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tools.processes import Process


def ws_url(process: Process, path: str) -> str:
    return process.url.replace("http://", "ws://") + path


def test_text_and_binary_frames_pass_both_ways(sidecar: Process) -> None:
    with connect(ws_url(sidecar, "/ws"), additional_headers={"Cookie": "session=abc"}) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello == {"hello": "session=abc"}
        ws.send("ping")
        assert ws.recv(timeout=5) == "echo:ping"
        ws.send(b"\x00\x01\x02")
        assert ws.recv(timeout=5) == b"\x02\x01\x00"


def test_the_subprotocol_chosen_upstream_is_the_one_the_client_gets(sidecar: Process) -> None:
    with connect(ws_url(sidecar, "/ws"), subprotocols=["other", "mcp.v1"]) as ws:
        assert ws.subprotocol == "mcp.v1"


def test_an_upstream_close_code_reaches_the_client(sidecar: Process) -> None:
    with connect(ws_url(sidecar, "/ws")) as ws:
        ws.recv(timeout=5)
        ws.send("close-please")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001


def test_an_upstream_refusal_is_relayed_as_a_refusal(sidecar: Process) -> None:
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(sidecar, "/ws-deny")):
        pass
    assert refused.value.response.status_code == 403
