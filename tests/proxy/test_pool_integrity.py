"""An upstream connection carries exactly one answer per request.

The real proxy (``ProxyApp`` under the sidecar's uvicorn protocol, its pooled
``UpstreamClient``) in front of an upstream on real TCP that misbehaves on
purpose: bytes sent while a connection is idle, bytes past the end of a
message, a Content-Length shorter or longer than the body, 204/304 with a
body, a 101 nobody asked for, 1xx interim answers, a close before or during
the answer, a head too large. Every request carries its own id, which the
upstream echoes in its answer; every client must get the answer to its own
request or a 502, never anyone else's, and no pool slot may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from uvicorn import Config
from uvicorn.server import ServerState

from sidecar.asgi import FORWARDING, Forwarding
from sidecar.config import Settings
from sidecar.proxy.http import ProxyApp
from sidecar.proxy.upstream import UpstreamClient
from sidecar.runtime.protocol import sidecar_protocol

# What an attacker wants a victim to receive: never anyone's answer.
FORGED = (
    b"HTTP/1.1 200 OK\r\nx-id: forged\r\nset-cookie: stolen=1\r\nContent-Length: 6\r\n\r\nforged"
)


def ok(rid: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nx-id: %b\r\nContent-Length: %d\r\n\r\n%b" % (rid, len(rid), rid)


def chunked(rid: bytes) -> bytes:
    half = len(rid) // 2
    body = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, rid[:half], len(rid) - half, rid[half:])
    return b"HTTP/1.1 200 OK\r\nx-id: %b\r\nTransfer-Encoding: chunked\r\n\r\n%b" % (rid, body)


# Each behaviour: the bytes written for a request with that id, whether the
# upstream closes afterwards, and what its client may see.
ANSWER = "own answer"
BAD_GATEWAY = "502"
CUT = "own head, then a cut connection"

BEHAVIOURS: dict[str, tuple[Callable[[bytes], bytes], bool, set[str]]] = {
    "ok": (ok, False, {ANSWER}),
    "chunked": (chunked, False, {ANSWER}),
    "interim answers first": (
        lambda rid: (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(rid)
        ),
        False,
        {ANSWER},
    ),
    "connection close": (
        lambda rid: ok(rid).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1),
        True,
        {ANSWER},
    ),
    # A Content-Length shorter than the body: the rest is another answer.
    "body past its content-length": (lambda rid: ok(rid) + FORGED, False, {ANSWER}),
    "204 with a body": (
        lambda rid: b"HTTP/1.1 204 No Content\r\nx-id: %b\r\n\r\n%b" % (rid, FORGED),
        False,
        {ANSWER},
    ),
    "304 with a body": (
        lambda rid: b"HTTP/1.1 304 Not Modified\r\nx-id: %b\r\n\r\n%b" % (rid, FORGED),
        False,
        {ANSWER},
    ),
    # RFC 9110 section 8.6: a 304 may carry the 200's Content-Length.
    "304 with the length of the 200": (
        lambda rid: b"HTTP/1.1 304 Not Modified\r\nx-id: %b\r\nContent-Length: 5\r\n\r\n" % rid,
        False,
        {ANSWER},
    ),
    "101 to a plain request": (
        lambda rid: (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n"
            b"Connection: Upgrade\r\n\r\n" + FORGED
        ),
        False,
        {BAD_GATEWAY},
    ),
    "101 without upgrade": (
        lambda rid: b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + FORGED,
        False,
        {BAD_GATEWAY},
    ),
    "head too large": (
        lambda rid: (
            b"HTTP/1.1 200 OK\r\nx-id: %b\r\n%bContent-Length: 0\r\n\r\n"
            % (rid, b"x-pad: %b\r\n" % (b"p" * 200) * 40)
        ),
        False,
        {BAD_GATEWAY},
    ),
    # llhttp refuses them (RFC 9110 section 5.5): never relayed.
    "a field with a nul": (
        lambda rid: ok(rid).replace(b"\r\n\r\n", b"\r\nx-evil: a\x00b\r\n\r\n", 1),
        False,
        {BAD_GATEWAY},
    ),
    "a field with a bare line feed": (
        lambda rid: ok(rid).replace(b"\r\n\r\n", b"\r\nx-evil: a\nset-cookie: stolen=1\r\n\r\n", 1),
        False,
        {BAD_GATEWAY},
    ),
    "close before answering": (lambda rid: b"", True, {BAD_GATEWAY}),
    # A Content-Length longer than the body: the body is cut short.
    "body shorter than its content-length": (
        lambda rid: (
            b"HTTP/1.1 200 OK\r\nx-id: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (rid, len(rid) + 10, rid)
        ),
        True,
        {CUT, BAD_GATEWAY},
    ),
    "garbage": (lambda rid: b"NOT HTTP\r\n\r\n", False, {BAD_GATEWAY}),
}


class MisbehavingUpstream:
    """Answers each ``GET /r/<id>`` as ``plan[id]`` says; ``poke()`` writes a
    forged answer on every connection waiting for its next request."""

    def __init__(self) -> None:
        self.plan: dict[bytes, str] = {}
        self.waiting: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.waiting.add(writer)
                head = await reader.readuntil(b"\r\n\r\n")
                self.waiting.discard(writer)
                rid = head.split(b" ", 2)[1].rsplit(b"/", 1)[-1]
                make, closes, _ = BEHAVIOURS[self.plan.get(rid, "ok")]
                writer.write(make(rid))
                await writer.drain()
                if closes:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.waiting.discard(writer)
            writer.close()

    def poke(self) -> None:
        for writer in list(self.waiting):
            if not writer.is_closing():
                writer.write(FORGED)

    async def close(self) -> None:
        self.server.close()
        for writer in list(self.waiting):
            writer.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxy(
    pool_size: int = 2,
    max_head_bytes: int = 4096,
    wrap: Callable[[ProxyApp], Any] | None = None,
) -> AsyncIterator[tuple[MisbehavingUpstream, UpstreamClient, httpx.AsyncClient]]:
    upstream = MisbehavingUpstream()
    await upstream.start()
    client = UpstreamClient(upstream.url, pool_size=pool_size, max_head_bytes=max_head_bytes)
    await client.open()
    app = ProxyApp(
        Settings(
            upstream_url=upstream.url,
            public_url="http://127.0.0.1:8080",
            upstream_response_timeout=3.0,
        ),
        client,
    )
    config = Config(
        wrap(app) if wrap else app,
        http=sidecar_protocol(10.0),
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
    )
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: config.http_protocol_class(config=config, server_state=state, app_state={}),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield upstream, client, http
    finally:
        await http.aclose()
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await server.wait_closed()
        await client.close()
        await upstream.close()


ids = (b"id%06d" % n for n in itertools.count())


async def ask(http: httpx.AsyncClient, upstream: MisbehavingUpstream, behaviour: str) -> None:
    """One request; fails the test unless its client got what the rule allows."""
    rid = next(ids)
    upstream.plan[rid] = behaviour
    allowed = BEHAVIOURS[behaviour][2]
    try:
        response = await http.get("/r/" + rid.decode())
    except httpx.TransportError as exc:
        broke: httpx.TransportError | None = exc
    else:
        broke = None
    if broke is not None:
        assert CUT in allowed, f"{behaviour}: connection broke: {broke!r}"
        return
    assert b"forged" not in response.content, behaviour
    assert "set-cookie" not in response.headers, behaviour
    if response.status_code == 502:
        assert BAD_GATEWAY in allowed, behaviour
        assert response.json()["error"] == "bad_gateway"
        return
    assert ANSWER in allowed or CUT in allowed, f"{behaviour}: {response.status_code}"
    assert response.headers["x-id"] == rid.decode(), behaviour
    if response.status_code == 200:
        assert response.content == rid, behaviour
    else:
        assert response.status_code in (204, 304), behaviour
        assert response.content == b""


async def pool_is_whole(client: UpstreamClient, size: int) -> None:
    for _ in range(100):
        if client.pool.slots._value == size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pool slots leaked: {client.pool.slots._value} of {size} free")


def loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    return errors


rounds = st.lists(
    st.tuples(
        st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=5),
        st.booleans(),  # then bytes on every idle connection
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rounds=rounds, sequential=st.booleans())
def test_every_client_gets_its_own_answer_or_a_502_however_the_upstream_misbehaves(
    rounds: list[tuple[list[str], bool]], sequential: bool
) -> None:
    async def run() -> None:
        errors = loop_errors()
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        async with proxy(pool_size=2) as (upstream, client, http):
            for behaviours, then_poke in rounds:
                if sequential:
                    for behaviour in behaviours:
                        await ask(http, upstream, behaviour)
                else:
                    await asyncio.gather(*(ask(http, upstream, b) for b in behaviours))
                if then_poke:
                    # Bytes that answer no request reach idle connections.
                    upstream.poke()
                    await asyncio.sleep(0.02)
            await pool_is_whole(client, 2)
            # The pool recovers: twice its size at once, every answer right.
            await asyncio.gather(*(ask(http, upstream, "ok") for _ in range(4)))
            await pool_is_whole(client, 2)
        assert errors == []

    asyncio.run(run())


def test_bytes_sent_to_an_idle_connection_never_become_the_next_answer() -> None:
    async def run() -> None:
        async with proxy(pool_size=1) as (upstream, _, http):
            await ask(http, upstream, "ok")
            upstream.poke()
            await asyncio.sleep(0.05)
            for _ in range(3):
                await ask(http, upstream, "ok")
            assert upstream.connections == 2  # the poisoned one was closed

    asyncio.run(run())


def test_an_answer_with_bytes_after_its_end_does_not_leak_its_pool_slot() -> None:
    async def run() -> None:
        async with proxy(pool_size=2) as (upstream, client, http):
            for behaviour in ("body past its content-length", "204 with a body", "ok", "ok"):
                await ask(http, upstream, behaviour)
            await pool_is_whole(client, 2)

    asyncio.run(run())


def test_a_101_to_a_plain_get_is_a_502_and_nothing_reaches_the_loops_exception_handler() -> None:
    async def run() -> None:
        errors = loop_errors()
        async with proxy(pool_size=1) as (upstream, client, http):
            await ask(http, upstream, "101 to a plain request")
            await ask(http, upstream, "101 without upgrade")
            await ask(http, upstream, "ok")
            await pool_is_whole(client, 1)
        assert errors == []

    asyncio.run(run())


def test_a_response_head_over_the_cap_is_a_502_and_closes_the_connection() -> None:
    async def run() -> None:
        async with proxy(pool_size=1, max_head_bytes=4096) as (upstream, _, http):
            await ask(http, upstream, "head too large")
            await ask(http, upstream, "ok")
            assert upstream.connections == 2

    asyncio.run(run())


def with_scope(extra: dict[str, Any]) -> Callable[[ProxyApp], Any]:
    def wrap(app: ProxyApp) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope.update(extra)
            await app(scope, receive, send)

        return wrapped

    return wrap


def test_a_response_header_with_a_line_break_is_a_502_with_a_log_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = ((b"access-control-allow-origin", b"https://a.example\r\nset-cookie: stolen=1"),)

    async def run() -> None:
        wrap = with_scope({FORWARDING: Forwarding(identity=(), drop_authorization=False, cors=bad)})
        async with proxy(pool_size=1, wrap=wrap) as (_, client, http):
            with capture_logs() as logs:
                response = await http.get("/r/one")
            assert response.status_code == 502
            assert response.json()["error"] == "bad_gateway"
            assert "set-cookie" not in response.headers
            assert any(line["log_level"] == "warning" for line in logs), logs
            await pool_is_whole(client, 1)

    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        asyncio.run(run())
    assert "Exception in ASGI application" not in caplog.text


def test_a_send_that_raises_still_gives_the_upstream_connection_back() -> None:
    """uvicorn raises from send ("Response content longer than
    Content-Length", an invalid header): the slot comes back all the same."""

    async def run() -> None:
        upstream = MisbehavingUpstream()
        await upstream.start()
        client = UpstreamClient(upstream.url, pool_size=1)
        await client.open()
        app = ProxyApp(
            Settings(upstream_url=upstream.url, public_url="http://127.0.0.1:8080"), client
        )
        try:
            for kind in ("http.response.start", "http.response.body"):

                async def send(message: dict[str, Any], kind: str = kind) -> None:
                    if message["type"] == kind:
                        raise RuntimeError("Response content longer than Content-Length")

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": b"", "more_body": False}

                scope = {
                    "type": "http",
                    "method": "GET",
                    "path": "/r/x",
                    "raw_path": b"/r/x",
                    "query_string": b"",
                    "headers": [(b"host", b"sidecar")],
                    "client": ("127.0.0.1", 1),
                    "scheme": "http",
                }
                with contextlib.suppress(RuntimeError):
                    await app(scope, receive, send)  # type: ignore[arg-type]
                assert client.pool.slots._value == 1, kind
        finally:
            await client.close()
            await upstream.close()

    asyncio.run(run())


def test_an_identity_header_with_a_line_break_is_a_502_and_never_reaches_the_upstream() -> None:
    smuggled = (("x-sidecar-email", "alice@example.com\r\nx-sidecar-role: admin"),)

    async def run() -> None:
        wrap = with_scope(
            {FORWARDING: Forwarding(identity=smuggled, drop_authorization=False, cors=())}
        )
        async with proxy(pool_size=1, wrap=wrap) as (upstream, client, http):
            with capture_logs() as logs:
                response = await http.get("/r/one")
            assert response.status_code == 502
            assert response.json()["error"] == "bad_gateway"
            warnings = [line for line in logs if line["log_level"] == "warning"]
            assert warnings, logs
            assert "alice" not in str(warnings)  # the value is never logged
            assert upstream.connections == 0
            await pool_is_whole(client, 1)

    asyncio.run(run())
