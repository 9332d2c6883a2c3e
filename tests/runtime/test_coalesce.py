"""One send per turn of the event loop: what the sidecar's server protocol
does with the writes uvicorn makes for one response."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.runtime.coalesce import CoalescingTransport


class Recording:
    """Stands for the connection's transport and notes every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", list(chunks)))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def run(test: Any) -> None:
    asyncio.run(test())


def test_the_head_and_body_of_one_response_leave_in_one_writelines() -> None:
    async def scenario() -> None:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        assert real.calls == []  # nothing yet: the turn is not over
        assert transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert real.calls == [
            ("writelines", [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok"])
        ]

    run(scenario)


def test_writes_in_later_turns_are_not_held_back() -> None:
    async def scenario() -> None:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"data: first\n\n")
        await asyncio.sleep(0)
        transport.write(b"data: second\n\n")
        await asyncio.sleep(0)
        assert real.calls == [("write", b"data: first\n\n"), ("write", b"data: second\n\n")]

    run(scenario)


def test_close_sends_what_was_written_before_it() -> None:
    async def scenario() -> None:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()
        assert real.calls == [("write", b"HTTP/1.1 400 Bad Request\r\n\r\n"), ("close", None)]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert len(real.calls) == 2

    run(scenario)


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def scenario() -> None:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"late")
        real.closing = True  # the peer went away within the turn
        await asyncio.sleep(0)
        assert real.calls == []

    run(scenario)


def test_empty_writes_schedule_nothing_and_other_calls_reach_the_transport() -> None:
    async def scenario() -> None:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"")
        await asyncio.sleep(0)
        assert real.calls == []
        assert transport.get_extra_info("peername") == "info:peername"

    run(scenario)
