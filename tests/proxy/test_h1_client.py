"""The proxy's HTTP/1.1 client against an upstream that answers exactly the
bytes each test scripts: every response shape, keep-alive reuse after each,
`Connection: close`, 1xx, HEAD, 204/304, close-delimited and truncated bodies,
resets and garbage; and, as properties, any body in any chunking, split at any
byte boundary on the wire, comes out whole."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proxy.h1 import H1Connection
from sidecar.proxy.upstream import UpstreamClient, UpstreamUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Answer = bytes | None | tuple[bytes, bytes]


class ScriptedUpstream:
    """Reads each request (head, then a Content-Length or chunked body) and
    answers with the next scripted bytes; ``None`` closes the connection
    without answering; ``(answer, stray)`` writes ``stray`` a moment after
    the answer, while the connection sits idle. Counts connections and keeps
    what it received."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", 0)
            )
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lower = head.lower()
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        chunk = await reader.readexactly(size + 2)
                        body += chunk[:-2]
                        if size == 0:
                            break
                self.requests.append(head + body)
                answer = self.answers.pop(0)
                if answer is None:
                    break
                stray = b""
                if isinstance(answer, tuple):
                    answer, stray = answer
                writer.write(answer)
                await writer.drain()
                if stray:
                    await asyncio.sleep(0.05)
                    writer.write(stray)
                    await writer.drain()
                if b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            # Also when the fixture cancels this handler at shutdown: a
            # writer left open is collected after its loop closed, and that
            # warning would fail whichever test runs then.
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            current = asyncio.current_task()
            handlers = [task for task in asyncio.all_tasks() if task is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def scripted() -> Iterator[list[ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []
    yield made
    for s in made:
        s.close()


def upstream(scripted: list[ScriptedUpstream], *answers: Answer) -> ScriptedUpstream:
    s = ScriptedUpstream(list(answers))
    scripted.append(s)
    return s


async def fetch(client: UpstreamClient, method: str = "GET", path: str = "/") -> tuple[int, bytes]:
    response = await client.request(method, path, [("host", "upstream")])
    body = await response.read()
    response.release()
    return response.status, body


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SHAPES = {
    "content-length": (OK, b"ok"),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"abcde",
    ),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    "304": (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", b""),
    "1xx then 200": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, b"ok"),
    "empty body": (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_each_response_shape_is_read_whole_and_the_connection_reused(
    scripted: list[ScriptedUpstream], shape: str
) -> None:
    answer, body = SHAPES[shape]
    server = upstream(scripted, answer, OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client) == (int(answer[9:12]) if b" 103 " not in answer else 200, body)
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert server.connections == 1  # kept alive after that shape


async def test_connection_close_is_not_reused(scripted: list[ScriptedUpstream]) -> None:
    server = upstream(
        scripted, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", OK
    )
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client) == (200, b"ok")
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_head_answer_has_no_body_and_its_connection_is_not_reused(
    scripted: list[ScriptedUpstream],
) -> None:
    server = upstream(scripted, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client, "HEAD") == (200, b"")
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_body_that_ends_with_the_connection_is_read_to_the_end(
    scripted: list[ScriptedUpstream],
) -> None:
    server = upstream(scripted, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client) == (200, b"until the end")
    finally:
        await client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhalf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nab",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_truncated_body_is_an_error_not_a_short_answer(
    scripted: list[ScriptedUpstream], answer: bytes
) -> None:
    server = upstream(scripted, answer)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        response = await client.request("GET", "/", [("host", "upstream")])
        with pytest.raises(UpstreamUnavailable):
            await response.read()
        response.close()
    finally:
        await client.close()


@pytest.mark.parametrize("answer", [None, b"NOT HTTP AT ALL\r\n\r\n"], ids=["reset", "garbage"])
async def test_a_reset_or_garbage_is_a_clean_upstream_error(
    scripted: list[ScriptedUpstream], answer: bytes | None
) -> None:
    server = upstream(scripted, answer)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        with pytest.raises(UpstreamUnavailable):
            await client.request("POST", "/", [("host", "upstream"), ("content-length", "0")])
    finally:
        await client.close()


async def test_request_bodies_are_sent_as_given_or_chunked(
    scripted: list[ScriptedUpstream],
) -> None:
    server = upstream(scripted, OK, OK)
    client = UpstreamClient(server.url)
    await client.open()

    async def parts() -> object:
        for piece in (b"one ", b"two"):
            yield piece

    try:
        sized = await client.request(
            "POST",
            "/a",
            [("host", "u"), ("content-length", "7")],
            parts(),  # type: ignore[arg-type]
        )
        await sized.read()
        sized.release()
        unsized = await client.request("POST", "/b", [("host", "u")], parts())  # type: ignore[arg-type]
        await unsized.read()
        unsized.release()
    finally:
        await client.close()
    first, second = server.requests
    assert first.startswith(b"POST /a HTTP/1.1\r\n")
    assert first.endswith(b"\r\n\r\none two")
    assert b"transfer-encoding: chunked" in second.lower()
    assert second.endswith(b"\r\n\r\none two")  # as the upstream reassembled it


# -- one answer per request: nothing else may ever reach a request -------------------

FORGED = b"HTTP/1.1 200 OK\r\nSet-Cookie: stolen=1\r\nContent-Length: 6\r\n\r\nforged"


async def test_bytes_that_arrive_on_an_idle_connection_close_it_and_are_nobodys_answer(
    scripted: list[ScriptedUpstream],
) -> None:
    server = upstream(scripted, (OK, FORGED), b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client) == (200, b"ok")
        await asyncio.sleep(0.2)  # the stray answer arrives while it is idle
        assert await fetch(client) == (200, b"mine")
    finally:
        await client.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n" + FORGED, 204, b""),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n" + FORGED, 304, b""),
        (OK + FORGED, 200, b"ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokAND MORE", 200, b"ok"),
        (OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + FORGED, 200, b"ok"),
    ],
    ids=["204", "304", "content-length", "garbage", "connection-close"],
)
async def test_bytes_past_the_end_of_an_answer_never_reach_the_next_request(
    scripted: list[ScriptedUpstream], answer: bytes, status: int, body: bytes
) -> None:
    server = upstream(scripted, answer, OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        response = await client.request("GET", "/", [("host", "upstream")])
        assert response.status == status
        assert response.set_cookies() == []
        assert await response.read() == body
        response.release()
        assert await fetch(client) == (200, b"ok")
        assert client.pool.slots._value == client.pool_size
    finally:
        await client.close()
    assert server.connections == 2  # the first connection was not reused


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n" + FORGED,
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + FORGED,
    ],
    ids=["with-upgrade", "bare"],
)
async def test_a_101_to_a_plain_get_is_an_upstream_error_and_no_exception_reaches_the_loop(
    scripted: list[ScriptedUpstream], answer: bytes
) -> None:
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    server = upstream(scripted, answer, OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        with pytest.raises(UpstreamUnavailable, match="101"):
            await client.request("GET", "/", [("host", "upstream")])
        await asyncio.sleep(0.05)
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert errors == []
    assert server.connections == 2


@pytest.mark.parametrize(
    "pad",
    [
        b"X-Pad: %b\r\n" % (b"p" * 20_000),  # one read, past the cap
        b"".join(b"X-Pad-%d: %b\r\n" % (n, b"p" * 1000) for n in range(2000)),  # 2 MB
    ],
    ids=["one-large-field", "endless-head"],
)
async def test_a_response_head_over_the_cap_is_an_upstream_error_and_its_connection_closed(
    scripted: list[ScriptedUpstream], pad: bytes
) -> None:
    server = upstream(scripted, b"HTTP/1.1 200 OK\r\n" + pad + b"Content-Length: 2\r\n\r\nok", OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        with pytest.raises(UpstreamUnavailable, match="larger than 16384"):
            await client.request("GET", "/", [("host", "upstream")])
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_head_just_under_the_cap_is_read(scripted: list[ScriptedUpstream]) -> None:
    pad = b"X-Pad: %b\r\n" % (b"p" * 16000)
    server = upstream(scripted, b"HTTP/1.1 200 OK\r\n" + pad + b"Content-Length: 2\r\n\r\nok")
    client = UpstreamClient(server.url)
    await client.open()
    try:
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("x-name", "alice\r\nX-Admin: 1")]),
        ("GET", "/", [("cookie", "a=1\nGET /admin HTTP/1.1")]),
        ("GET", "/", [("x-name", "nul\x00")]),
        ("GET", "/", [("x-evil\r\nx-admin", "1")]),
        ("GET", "/a\r\nX-Admin: 1", []),
        ("GET", "/a HTTP/1.1\r\n", []),
        ("GET / HTTP/1.1\r\n\r\nGET", "/", []),
        ("GET", "/", [("x-name", "\u0100 outside latin-1")]),
    ],
    ids=[
        "crlf-value",
        "lf-value",
        "nul-value",
        "crlf-name",
        "crlf-target",
        "space-target",
        "crlf-method",
        "not-latin-1",
    ],
)
async def test_a_request_head_with_cr_lf_or_nul_is_refused_and_never_written(
    scripted: list[ScriptedUpstream], method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    server = upstream(scripted, OK, OK)
    client = UpstreamClient(server.url)
    await client.open()
    try:
        with pytest.raises(UpstreamUnavailable, match="refused"):
            await client.request(method, target, [("host", "upstream"), *headers])
        assert await fetch(client) == (200, b"ok")
    finally:
        await client.close()
    assert len(server.requests) == 1  # only the good one


# -- properties: any body, any chunking, any split on the wire ----------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        pass

    def close(self) -> None:
        pass


def encode_chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[: max(1, size)], rest[max(1, size) :]
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
    if rest:
        out += b"%x\r\n%b\r\n" % (len(rest), rest)
    return out + b"0\r\n\r\n"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    body=st.binary(max_size=3000),
    chunk_sizes=st.lists(st.integers(1, 700), max_size=12),
    cuts=st.lists(st.integers(1, 5000), max_size=10),
    chunked=st.booleans(),
)
def test_any_body_in_any_chunking_split_anywhere_comes_out_whole(
    body: bytes, chunk_sizes: list[int], cuts: list[int], chunked: bool
) -> None:
    if chunked:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encode_chunked(
            body, chunk_sizes
        )
    else:
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def run() -> bytes:
        conn = H1Connection(asyncio.get_running_loop())
        conn.connection_made(FakeTransport())
        conn.begin()  # a request was sent: its answer may come
        offset = 0
        for cut in sorted(set(cuts)):
            if cut >= len(wire):
                break
            conn.data_received(wire[offset:cut])
            offset = cut
        conn.data_received(wire[offset:])
        await conn.head
        got = b"".join([c async for c in conn.body()])
        assert conn.complete
        assert conn.keep_alive
        return got

    assert asyncio.run(run()) == body


@settings(max_examples=100, deadline=None, derandomize=True)
@given(body=st.binary(min_size=2, max_size=2000), cut=st.integers(1, 2000))
def test_the_rest_and_the_end_arriving_while_a_chunk_is_sent_are_not_lost(
    body: bytes, cut: int
) -> None:
    """The consumer is away (sending a chunk to the client) when the rest of
    the body and its end arrive: everything must still come out."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    cut = min(cut, len(body) - 1)

    async def run() -> bytes:
        conn = H1Connection(asyncio.get_running_loop())
        conn.connection_made(FakeTransport())
        conn.begin()  # a request was sent: its answer may come
        conn.data_received(head + body[:cut])
        await conn.head
        got = b""
        async for chunk in conn.body():
            got += chunk
            if len(got) == cut:
                conn.data_received(body[cut:])  # arrives, and completes, mid-send
        return got

    assert asyncio.run(run()) == body
