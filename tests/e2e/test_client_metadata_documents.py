"""Client ID Metadata Documents: an https URL as client_id, fetched with SSRF
guards, validated, cached, and shown on the consent page."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sidecar.oauth.cimd import GuardedResolver
from tests.e2e.conftest import Stack
from tools.oauth import REDIRECT, Browser, OAuthClient, query_of


class DocumentServer:
    """Serves client metadata documents on http://localhost:<port> (a host the
    test sidecar allows through cimd_allowed_hosts)."""

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.fetches[self.path] += 1
                url = f"http://localhost:{outer.port}{self.path}"
                status, headers, body = outer.document(self.path, url)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}{path}"

    def document(self, path: str, url: str) -> tuple[int, dict[str, str], bytes]:
        doc = {
            "client_id": url,
            "client_name": "Docs <b>App</b>",
            "redirect_uris": [REDIRECT],
            "client_uri": "https://docs.example",
        }
        cache = {"Cache-Control": "max-age=60", "Content-Type": "application/json"}
        if path.startswith("/nostore"):
            cache["Cache-Control"] = "no-store"
        elif path.startswith("/mismatch"):
            doc["client_id"] = "https://somebody.else/client.json"
        elif path.startswith("/confidential"):
            doc["token_endpoint_auth_method"] = "client_secret_basic"
        elif path.startswith("/javascript"):
            doc["redirect_uris"] = ["javascript:alert(1)"]
        elif path.startswith("/big"):
            doc["padding"] = "x" * 20_000
        elif path.startswith("/redirect-other"):
            return 302, {"Location": f"http://127.0.0.1:{self.port}/client.json"}, b""
        elif path.startswith("/redirect-same"):
            # Even to the same host: later CIMD drafts forbid following any.
            return 302, {"Location": f"http://localhost:{self.port}/client.json"}, b""
        elif path.startswith("/nameless"):
            del doc["client_name"]
        elif path.startswith("/noredirects"):
            del doc["redirect_uris"]
        elif path.startswith("/text"):
            cache["Content-Type"] = "text/plain"
        elif path.startswith("/remote"):
            doc["redirect_uris"] = ["https://app.docs.example/callback"]
        elif path.startswith("/missing"):
            return 404, {}, b""
        return 200, cache, json.dumps(doc).encode()

    def __enter__(self) -> DocumentServer:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def documents() -> Iterator[DocumentServer]:
    with DocumentServer() as server:
        yield server


def test_the_metadata_advertises_document_support(oauth_stack: Stack) -> None:
    meta = httpx.get(oauth_stack.sidecar.url + "/.well-known/oauth-authorization-server/oauth")
    assert meta.json()["client_id_metadata_document_supported"] is True


def test_a_document_client_completes_the_flow_and_is_shown_escaped(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer
) -> None:
    client = OAuthClient(oauth_stack.sidecar.url, client_id=documents.url("/client.json"))
    page = browser.get(client.authorize_url())
    assert page.status_code == 200, page.text
    assert "Docs &lt;b&gt;App&lt;/b&gt;" in page.text
    assert "<b>App</b>" not in page.text
    assert "127.0.0.1:43210" in page.text  # the redirect host
    # The host that published the document stands beside the name, and a
    # document whose every redirect is localhost is flagged.
    assert (
        '<strong>Docs &lt;b&gt;App&lt;/b&gt;</strong> <span class="muted">(localhost)' in page.text
    )
    assert "on this computer (localhost)" in page.text
    code = query_of(browser.consent(page).headers["location"])["code"]
    tokens = client.exchange(code)
    assert tokens.status_code == 200, tokens.text
    assert "refresh_token" in tokens.json()


def test_documents_are_cached_per_their_cache_control(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer
) -> None:
    for path in ("/client.json?cached", "/nostore.json"):
        client = OAuthClient(oauth_stack.sidecar.url, client_id=documents.url(path))
        for _ in range(2):
            assert browser.get(client.authorize_url()).status_code == 200
    assert documents.fetches["/client.json?cached"] == 1
    assert documents.fetches["/nostore.json"] == 2


@pytest.mark.parametrize(
    "path",
    [
        "/mismatch.json",
        "/confidential.json",
        "/javascript.json",
        "/big.json",
        "/redirect-other.json",
        "/redirect-same.json",
        "/nameless.json",
        "/noredirects.json",
        "/text.json",
        "/missing.json",
    ],
)
def test_unusable_documents_are_refused_with_a_page(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer, path: str
) -> None:
    client = OAuthClient(oauth_stack.sidecar.url, client_id=documents.url(path))
    r = browser.get(client.authorize_url())
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "Unknown application" in r.text


@pytest.mark.parametrize(
    "client_id",
    [
        "http://127.0.0.1:{port}/client.json",  # plain http to a host not allowed
        "https://127.0.0.1:{port}/client.json",  # loopback literal
        "https://[::1]/client.json",
        "https://10.1.2.3/client.json",  # private range: never contacted
        "https://169.254.169.254/latest/meta-data",  # cloud metadata address
        "https://user:pw@docs.example/client.json",
        "http://localhost:{port}/a/../client.json",  # dot segments
        "http://localhost:{port}/a/%2e%2e/client.json",
        "http://localhost:{port}/./client.json",
        "http://localhost:{port}/client.json#frag",
    ],
)
def test_ssrf_targets_are_refused_without_a_fetch(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer, client_id: str
) -> None:
    client = OAuthClient(oauth_stack.sidecar.url, client_id=client_id.format(port=documents.port))
    started = time.monotonic()
    r = browser.get(client.authorize_url())
    assert r.status_code == 400
    assert time.monotonic() - started < 2  # refused, not timed out
    assert sum(documents.fetches.values()) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_names_that_resolve_to_private_addresses_are_refused(anyio_backend: str) -> None:
    resolver = GuardedResolver(allowed_hosts=())
    with pytest.raises(OSError, match="non-public"):
        await resolver.resolve("localhost", 443)
    allowed = GuardedResolver(allowed_hosts=("localhost",))
    assert await allowed.resolve("localhost", 443)
    await resolver.close()
    await allowed.close()


def test_a_document_with_a_remote_redirect_is_not_flagged_as_localhost_only(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer
) -> None:
    client = OAuthClient(
        oauth_stack.sidecar.url,
        client_id=documents.url("/remote.json"),
        redirect_uri="https://app.docs.example/callback",
    )
    page = browser.get(client.authorize_url())
    assert page.status_code == 200, page.text
    assert "Described by a document published at <strong>localhost</strong>" in page.text
    assert "on this computer (localhost)" not in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/a\r\nX-Sidecar-User-Id: victim\r\n/client.json",  # a header line smuggled
        "/a\nb/client.json",
        "/a\rb/client.json",
        "/a\x00b/client.json",
        "/a\tb/client.json",  # urlsplit drops TAB, CR and LF silently
        "/a b/client.json",
        "/caf\u00e9/client.json",  # non-ASCII
        "/a\x7fb/client.json",
        "/a%zzb/client.json",  # a broken percent-encoding
    ],
)
def test_a_document_url_with_control_characters_spaces_or_non_ascii_is_never_fetched(
    oauth_stack: Stack, browser: Browser, documents: DocumentServer, path: str
) -> None:
    # The document at that URL would name itself: the attack needs nothing
    # more than a public https URL the attacker controls.
    client = OAuthClient(oauth_stack.sidecar.url, client_id=documents.url(path))
    r = browser.get(client.authorize_url())
    assert r.status_code == 400
    assert "location" not in r.headers
    assert sum(documents.fetches.values()) == 0
    token = client.token(grant_type="authorization_code", code="x", code_verifier="y" * 43)
    # A NUL is refused with every other parameter before any client lookup.
    expected = (400, "invalid_request") if "\x00" in path else (401, "invalid_client")
    assert (token.status_code, token.json()["error"]) == expected
    assert sum(documents.fetches.values()) == 0
