"""Sessions that survive real clients, end to end against the real Better
Auth + convex() server: a lost refresh answer retried (by the MCP Python SDK
client itself), the grace answers and reuse revocations counted apart, and
self-registered clients that do not pile up."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import httpx2
import pytest

from tests.e2e.conftest import Stack, start_stack
from tests.e2e.test_mcp_sdk_client import headless_provider, whoami
from tests.observability.test_metrics import metrics_of, value
from tools.mcp_tokens import MemoryTokens
from tools.oauth import Browser, OAuthClient


def test_a_retried_refresh_is_counted_as_a_grace_answer_and_an_older_token_as_reuse(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    before = metrics_of(oauth_stack.sidecar)
    first = client.exchange(client.login(browser)["code"]).json()
    second = client.refresh(first["refresh_token"]).json()
    retried = client.refresh(first["refresh_token"])  # the first answer was lost
    assert retried.status_code == 200, retried.text
    assert retried.json()["refresh_token"] == second["refresh_token"]
    third = client.refresh(second["refresh_token"]).json()
    older = client.refresh(first["refresh_token"])  # now two rotations old
    assert older.json()["error"] == "invalid_grant"
    assert client.refresh(third["refresh_token"]).json()["error"] == "invalid_grant"
    after = metrics_of(oauth_stack.sidecar)
    name = "sidecar_tokens_total"
    grace = value(after, name, event="refreshed", reason="grace") - value(
        before, name, event="refreshed", reason="grace"
    )
    reuse = value(after, name, event="revoked", reason="refresh_reuse") - value(
        before, name, event="revoked", reason="refresh_reuse"
    )
    assert (grace, reuse) == (1, 1)


# -- the MCP SDK client, its refresh answer lost on the way back ----------------------


class DroppingProxy:
    """A TCP proxy in front of the sidecar that, once, forwards a refresh
    request, lets the sidecar answer, and closes the client's connection
    without passing the answer on: a timeout, a laptop lid, a killed process."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        drop = asyncio.Event()

        async def client_to_sidecar() -> None:
            while chunk := await reader.read(65536):
                if self.dropped == 0 and b"grant_type=refresh_token" in chunk:
                    self.dropped += 1
                    drop.set()
                up_writer.write(chunk)
                await up_writer.drain()

        async def sidecar_to_client() -> None:
            while chunk := await up_reader.read(65536):
                if drop.is_set():
                    # The sidecar answered (a rotation happened); the client
                    # never hears of it.
                    break
                writer.write(chunk)
                await writer.drain()

        tasks = [
            asyncio.ensure_future(client_to_sidecar()),
            asyncio.ensure_future(sidecar_to_client()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def proxied_stack() -> Iterator[tuple[Stack, DroppingProxy]]:
    """The app trusts the proxy's origin, which is the public URL clients use."""
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}"},
        {"SIDECAR_RESOURCES": "/api/mcp"},
    )
    proxy = DroppingProxy(stack.sidecar.port)
    yield stack, proxy
    proxy.close()
    stack.sidecar.stop()
    stack.app.stop()


@pytest.mark.anyio
async def test_the_sdk_client_whose_refresh_answer_was_lost_retries_and_keeps_its_session(
    proxied_stack: tuple[Stack, DroppingProxy],
) -> None:
    stack, proxy = proxied_stack
    base = stack.sidecar.url
    # The MCP client's traffic goes through the proxy (a request hook points
    # it there); the public URL, the issuer and the resource stay the sidecar's.
    mcp_url = f"{base}/api/mcp"
    browser = Browser(base).sign_up("Evelyn Boyd")
    seen: dict[str, str] = {}
    storage = MemoryTokens()
    provider = headless_provider(mcp_url, browser, seen, storage)

    async def through_proxy(request: httpx2.Request) -> None:
        if request.url.port == stack.sidecar.port:
            request.url = request.url.copy_with(port=proxy.port)
            request.headers["host"] = f"127.0.0.1:{stack.sidecar.port}"

    async with httpx2.AsyncClient(
        auth=provider, timeout=20, event_hooks={"request": [through_proxy]}
    ) as http:
        me = await whoami(http, mcp_url)
        first_authorize = seen["authorize"]
        first = storage.tokens
        assert first is not None
        assert first.refresh_token

        # The access token expires; the SDK refreshes, and that answer is lost.
        provider.context.token_expiry_time = time.time() - 1
        with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
            await whoami(http, mcp_url)
        assert proxy.dropped == 1
        assert storage.tokens is not None
        assert storage.tokens.refresh_token == first.refresh_token  # it never heard back

        # Its next tool call retries the refresh with the same token: the
        # grace period answers it, and no new authorization is needed.
        again = await whoami(http, mcp_url)
        assert again["userId"] == me["userId"]
        assert seen["authorize"] == first_authorize  # no second authorization
        assert storage.tokens.refresh_token != first.refresh_token


# -- registrations that do not pile up -------------------------------------------------


@pytest.fixture(scope="module")
def short_registrations() -> Iterator[Stack]:
    stack = start_stack({}, {"SIDECAR_REGISTRATION_UNUSED_TTL": "2"})
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def test_an_unused_registration_expires_and_its_client_is_told_to_register_again(
    short_registrations: Stack,
) -> None:
    base = short_registrations.sidecar.url
    unused = OAuthClient(base)
    unused.register()
    used = OAuthClient(base)
    used.register()
    browser = Browser(base).sign_up()
    tokens = used.exchange(used.login(browser, scope="openid")["code"]).json()
    time.sleep(2.5)
    # The one that never completed an authorization is gone: 401 invalid_client,
    # the signal real clients re-register on.
    gone = unused.token(grant_type="authorization_code", code="x", code_verifier="y")
    assert gone.status_code == 401
    assert gone.json()["error"] == "invalid_client"
    assert browser.get(unused.authorize_url()).status_code == 400  # "Unknown application"
    # The one in use is kept, and its session goes on.
    assert used.refresh(tokens["refresh_token"]).status_code == 200
    unused.register()  # registering again works at once
    assert browser.get(unused.authorize_url(scope="openid")).status_code == 200


def test_clients_prune_forgets_unused_registrations_by_hand(
    short_registrations: Stack,
) -> None:
    env = dict(short_registrations.sidecar.extra["env"])  # type: ignore[arg-type]
    env["SIDECAR_REGISTRATION_UNUSED_TTL"] = "1"
    base = short_registrations.sidecar.url
    kept = OAuthClient(base)
    kept.register()
    browser = Browser(base).sign_up()
    kept.exchange(kept.login(browser, scope="openid")["code"])
    time.sleep(1.2)
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "clients", "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1].startswith("pruned ")
    assert kept.client_id not in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "sidecar", "clients", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert kept.client_id in listed
    assert httpx.get(f"{base}/oauth/healthz").status_code == 200
