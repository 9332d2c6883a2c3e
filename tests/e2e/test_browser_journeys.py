"""The consent journey as a person meets it: Debian's Chromium, driven by
Playwright, against the real Better Auth + convex() server through the
sidecar. An HTTP client that follows redirects ignores CSP, JavaScript and
focus; these tests do not. Screenshots of every page land in the run's
temporary directory (tests/support/browser.py says where)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.conftest import Stack
from tests.support.browser import screenshot
from tools.oauth import PASSWORD, Browser, OAuthClient


@dataclass
class Person:
    """One browser context (its own cookies), a page, and what reached the
    client's redirect URI or the console."""

    context: Any
    page: Any
    base: str
    redirect_uri: str
    arrived: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def catch(self, redirect_uri: str) -> None:
        def fulfill(route: Any) -> None:
            self.arrived.append(route.request.url)
            route.fulfill(status=200, content_type="text/plain", body="client callback")

        self.context.route(redirect_uri + "**", fulfill)

    def sign_in_by_api(self, email: str) -> None:
        r = self.context.request.post(
            f"{self.base}/api/auth/sign-in/email",
            data={"email": email, "password": PASSWORD},
            headers={"Origin": self.base},
        )
        assert r.ok, r.text()

    @property
    def callback(self) -> dict[str, str]:
        assert self.arrived, f"the client got nothing; console: {self.console}"
        return {k: v[0] for k, v in parse_qs(urlsplit(self.arrived[-1]).query).items()}

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]


class LoopbackClient:
    """A desktop client's loopback listener, as a real one listens
    (Playwright's routing does not see every redirect target). Like a real
    desktop client it takes whatever port the system gives it (RFC 8252
    section 7.3: the sidecar matches loopback redirect URIs on any port); a
    fixed port could be taken, as any port in the ephemeral range may be by
    some other socket's outgoing connection."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.arrived: list[str] = []
        outer = self

        class Callback(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/callback"):  # not the favicon
                    outer.arrived.append(outer.origin + self.path)
                body = b"client callback"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.redirect_uri = self.origin + "/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def loopback_client() -> Iterator[LoopbackClient]:
    listener = LoopbackClient()
    yield listener
    listener.close()


@pytest.fixture
def person(chromium: Any, oauth_stack: Stack, loopback_client: LoopbackClient) -> Iterator[Person]:
    yield from _person(chromium, oauth_stack, loopback_client)


def _person(
    chromium: Any, stack: Stack, listener: LoopbackClient, **options: Any
) -> Iterator[Person]:
    context = chromium.new_context(**options)
    context.set_default_timeout(10_000)
    page = context.new_page()
    listener.arrived.clear()
    who = Person(context, page, stack.sidecar.url, listener.redirect_uri, arrived=listener.arrived)
    page.on("console", lambda message: who.console.append(message.text))
    yield who
    context.close()


@pytest.fixture
def account(oauth_stack: Stack) -> Browser:
    """A person with an account in the app (signed up over HTTP)."""
    return Browser(oauth_stack.sidecar.url).sign_up("Mary Jackson")


@pytest.fixture
def client(oauth_stack: Stack, loopback_client: LoopbackClient) -> OAuthClient:
    c = OAuthClient(oauth_stack.sidecar.url, redirect_uri=loopback_client.redirect_uri)
    c.register(client_name="Journey Client", client_uri="https://journey.example")
    return c


def test_an_anonymous_person_signs_in_on_the_apps_page_and_allows(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    page = person.page
    page.goto(person.base + client.authorize_url(scope="openid email", state="s-1"))
    # The app's own login page, with the way back in callbackURL.
    assert urlsplit(page.url).path == "/login"
    assert "callbackURL=" in page.url
    screenshot(page, "login")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Allow").wait_for()
    assert "Journey Client" in page.content()
    screenshot(page, "consent")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(person.redirect_uri + "**")
    got = person.callback
    assert got["state"] == "s-1"
    assert got["iss"] == f"{person.base}/oauth"
    assert person.csp_violations() == []
    tokens = client.exchange(got["code"])
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["scope"] == "openid email"


def test_deny_reaches_the_client_as_access_denied(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    person.sign_in_by_api(account.email)
    person.page.goto(person.base + client.authorize_url(scope="openid"))
    person.page.get_by_role("button", name="Deny").click()
    person.page.wait_for_url(person.redirect_uri + "**")
    assert person.callback["error"] == "access_denied"
    assert person.csp_violations() == []


def test_consent_already_given_goes_straight_to_the_client(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    person.sign_in_by_api(account.email)
    person.page.goto(person.base + client.authorize_url(scope="openid"))
    person.page.get_by_role("button", name="Allow").click()
    person.page.wait_for_url(person.redirect_uri + "**")
    person.page.goto(person.base + client.authorize_url(scope="openid"))
    person.page.wait_for_url(person.redirect_uri + "**")
    assert len(person.arrived) == 2
    assert "code" in person.callback


def test_prompt_consent_shows_the_page_again_and_prompt_login_asks_to_sign_in(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    person.sign_in_by_api(account.email)
    person.page.goto(person.base + client.authorize_url(scope="openid"))
    person.page.get_by_role("button", name="Allow").click()
    person.page.wait_for_url(person.redirect_uri + "**")
    person.page.goto(person.base + client.authorize_url(scope="openid", prompt="consent"))
    person.page.get_by_role("button", name="Allow").wait_for()
    person.page.goto(person.base + client.authorize_url(scope="openid", prompt="login"))
    assert urlsplit(person.page.url).path == "/login"
    person.page.get_by_label("Email").fill(account.email)
    person.page.get_by_label("Password").fill(PASSWORD)
    person.page.get_by_role("button", name="Sign in").click()
    person.page.wait_for_url(person.redirect_uri + "**")  # remembered consent, signed in afresh
    assert "code" in person.callback


@pytest.mark.parametrize(
    ("redirect_uri", "source"),
    [
        ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai"),
        ("http://localhost:51999/cb", "http://localhost:51999"),
    ],
)
def test_allow_reaches_an_https_or_loopback_client_in_chromium(
    person: Person, account: Browser, oauth_stack: Stack, redirect_uri: str, source: str
) -> None:
    client = OAuthClient(oauth_stack.sidecar.url, redirect_uri=redirect_uri)
    client.register(client_name="Remote Client")
    person.catch(redirect_uri)
    person.sign_in_by_api(account.email)
    response = person.page.goto(person.base + client.authorize_url(scope="openid"))
    assert f"form-action 'self' {source}" in response.headers["content-security-policy"]
    person.page.get_by_role("button", name="Allow").click()
    person.page.wait_for_url(redirect_uri + "**")
    assert "code" in person.callback
    assert person.csp_violations() == []


def test_allow_reaches_a_private_use_scheme_client_in_chromium(
    person: Person, account: Browser, oauth_stack: Stack
) -> None:
    """Chromium hands cursor:// to the desktop (nothing to intercept), so the
    test reads what Chromium did: the consent POST's 303 names the client's
    address and the console reports no CSP violation."""
    redirect_uri = "cursor://anysphere.cursor-retrieval/oauth/callback"
    client = OAuthClient(oauth_stack.sidecar.url, redirect_uri=redirect_uri)
    client.register(client_name="Cursor")
    person.sign_in_by_api(account.email)
    response = person.page.goto(person.base + client.authorize_url(scope="openid"))
    assert "form-action 'self' cursor:" in response.headers["content-security-policy"]
    answers: list[Any] = []
    person.page.on(
        "response", lambda r: answers.append(r) if r.url.endswith("/oauth/consent") else None
    )
    person.page.get_by_role("button", name="Allow").click()
    person.page.wait_for_timeout(500)
    assert answers, "the consent form was never sent"
    assert answers[0].status == 303
    assert answers[0].headers["location"].startswith(redirect_uri + "?code=")
    assert person.csp_violations() == []


def test_keyboard_only_tab_to_allow_and_enter(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    person.sign_in_by_api(account.email)
    page = person.page
    page.goto(person.base + client.authorize_url(scope="openid"))
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Allow":
            break
    assert page.evaluate("document.activeElement.textContent") == "Allow"
    page.keyboard.press("Enter")
    page.wait_for_url(person.redirect_uri + "**")
    assert "code" in person.callback


def test_the_journey_needs_no_javascript(
    chromium: Any,
    oauth_stack: Stack,
    loopback_client: LoopbackClient,
    account: Browser,
    client: OAuthClient,
) -> None:
    for who in _person(chromium, oauth_stack, loopback_client, java_script_enabled=False):
        who.sign_in_by_api(account.email)
        who.page.goto(who.base + client.authorize_url(scope="openid"))
        who.page.get_by_role("button", name="Allow").click()
        who.page.wait_for_url(who.redirect_uri + "**")
        assert "code" in who.callback


def test_error_pages_send_the_person_nowhere(
    person: Person, account: Browser, client: OAuthClient, oauth_stack: Stack
) -> None:
    person.sign_in_by_api(account.email)
    page = person.page
    unknown = OAuthClient(oauth_stack.sidecar.url, client_id="no-such-client")
    page.goto(person.base + unknown.authorize_url())
    assert "Unknown application" in page.content()
    screenshot(page, "error-unknown-client")
    foreign = OAuthClient(
        oauth_stack.sidecar.url,
        client_id=client.client_id,
        redirect_uri="https://evil.example/cb",
    )
    page.goto(person.base + foreign.authorize_url())
    assert "Invalid redirect address" in page.content()
    page.goto(f"{person.base}/oauth/authorize/continue?request=expired-or-never-was")
    assert "expired" in page.content()
    screenshot(page, "error-expired")
    page.wait_for_timeout(300)
    assert person.arrived == []
    assert urlsplit(page.url).netloc == urlsplit(person.base).netloc


@pytest.mark.parametrize(
    ("width", "scheme"), [(360, "light"), (360, "dark"), (1280, "light"), (1280, "dark")]
)
def test_the_consent_page_reads_on_a_phone_and_in_dark_mode(
    chromium: Any,
    oauth_stack: Stack,
    loopback_client: LoopbackClient,
    account: Browser,
    client: OAuthClient,
    width: int,
    scheme: str,
) -> None:
    options = {"viewport": {"width": width, "height": 800}, "color_scheme": scheme}
    for who in _person(chromium, oauth_stack, loopback_client, **options):
        who.sign_in_by_api(account.email)
        who.page.goto(who.base + client.authorize_url(scope="openid email"))
        allow = who.page.get_by_role("button", name="Allow")
        box = allow.bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= width  # nothing off the side of a phone
        scroll = who.page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width
        background = who.page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(18, 18, 18)") == (scheme == "dark")
        # The primary button stands out from the page in both schemes.
        button = allow.evaluate("e => getComputedStyle(e).backgroundColor")
        assert button != background
        screenshot(who.page, f"consent-{width}-{scheme}")


def test_every_page_passes_an_accessibility_scan(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    person.sign_in_by_api(account.email)
    untrusted = OAuthClient(person.base, redirect_uri="https://unknown.example/cb")
    untrusted.register(client_name="Never Approved")
    pages = {
        "consent": client.authorize_url(scope="openid"),
        "error": "/oauth/authorize/continue?request=nope",
        "refused": untrusted.authorize_url(response_type="token"),
        "account": "/oauth/account",
    }
    for name, url in pages.items():
        person.page.goto(person.base + url)
        screenshot(person.page, f"axe-{name}")
        results = axe.run(person.page)
        serious = [
            v for v in results.response["violations"] if v["impact"] in ("serious", "critical")
        ]
        assert serious == [], (name, serious)


def test_connected_apps_from_sign_in_to_revoke(
    person: Person, account: Browser, client: OAuthClient
) -> None:
    page = person.page
    page.goto(f"{person.base}/oauth/account")
    assert urlsplit(page.url).path == "/login"  # anonymous: the app's login first
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Connected apps").wait_for()
    assert "No application has access" in page.content()
    page.goto(person.base + client.authorize_url(scope="openid email"))
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(person.redirect_uri + "**")
    assert client.exchange(person.callback["code"]).status_code == 200  # the grant begins
    page.goto(f"{person.base}/oauth/account")
    assert "Journey Client" in page.content()
    screenshot(page, "connected-apps")
    page.get_by_role("button", name="Revoke access for Journey Client").click()
    page.get_by_role("status").wait_for()
    assert "Journey Client" not in page.content()
    assert person.csp_violations() == []
    screenshot(page, "connected-apps-revoked")
    # Asked again next time, since the consent was forgotten.
    page.goto(person.base + client.authorize_url(scope="openid email"))
    page.get_by_role("button", name="Allow").wait_for()


@pytest.fixture(scope="module")
def short_lived_stack() -> Iterator[Stack]:
    """Pending authorizations that expire after one second."""
    from tests.e2e.conftest import start_stack

    stack = start_stack({}, {"SIDECAR_PENDING_AUTHORIZATION_TTL": "1"})
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def test_allow_on_a_pending_request_that_expired_shows_why_and_sends_nowhere(
    chromium: Any, short_lived_stack: Stack, loopback_client: LoopbackClient
) -> None:
    base = short_lived_stack.sidecar.url
    account = Browser(base).sign_up("Annie Easley")
    client = OAuthClient(base, redirect_uri=loopback_client.redirect_uri)
    client.register(client_name="Slow Reader")
    for who in _person(chromium, short_lived_stack, loopback_client):
        who.sign_in_by_api(account.email)
        who.page.goto(base + client.authorize_url(scope="openid"))
        allow = who.page.get_by_role("button", name="Allow")
        allow.wait_for()
        who.page.wait_for_timeout(2500)  # the person reads slowly
        allow.click()
        who.page.get_by_role("heading", name="This sign-in request has expired").wait_for()
        assert who.arrived == []
        screenshot(who.page, "error-expired-after-allow")


def test_the_pages_pass_an_accessibility_scan_in_dark_mode(
    chromium: Any,
    oauth_stack: Stack,
    loopback_client: LoopbackClient,
    account: Browser,
    client: OAuthClient,
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    options = {"color_scheme": "dark", "viewport": {"width": 360, "height": 800}}
    for who in _person(chromium, oauth_stack, loopback_client, **options):
        who.sign_in_by_api(account.email)
        for name, url in (
            ("consent", client.authorize_url(scope="openid")),
            ("account", "/oauth/account"),
        ):
            who.page.goto(who.base + url)
            screenshot(who.page, f"axe-{name}-360-dark")
            results = Axe().run(who.page)
            serious = [
                v for v in results.response["violations"] if v["impact"] in ("serious", "critical")
            ]
            assert serious == [], (url, serious)
