"""The consent form is bound to the person who sees it (RFC 9700 section 4.7,
RFC 6749 section 10.12): a pending request handed to someone else through
its resume link gets a CSRF token of its own for that person, and a consent
post is honoured only from the sidecar's own origin, with the token shown to
the person who is signed in. Against the real Better Auth + convex() server;
the retarget end to end in Chromium with a SameSite=None session cookie (an
app with cross-site cookies), where the browser itself carries the victim's
cookie on a cross-site form post."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack
from tests.support.browser import screenshot
from tools.oauth import PASSWORD, Browser, OAuthClient, form_fields, query_of

ATTACKER_REDIRECT = "https://attacker.example/callback"


def continue_link(stack: Stack, request_id: str) -> str:
    return f"{stack.sidecar.url}/oauth/authorize/continue?request={request_id}"


def attackers_consent(stack: Stack) -> tuple[Browser, dict[str, str]]:
    """Mallory signs in as herself, starts an authorization with her own
    client and redirect URI, and reads ``request`` and ``csrf`` from her own
    consent page."""
    mallory = Browser(stack.sidecar.url).sign_up("Mallory")
    client = OAuthClient(stack.sidecar.url, redirect_uri=ATTACKER_REDIRECT)
    client.register(client_name="Mallory's App")
    page = mallory.get(client.authorize_url(scope="openid email"))
    assert page.status_code == 200, page.text
    fields = form_fields(page.text)
    assert set(fields) == {"request", "csrf"}
    return mallory, fields


# -- over HTTP -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",  # a sandboxed frame, or a page that sends no referrer
        "http://127.0.0.1:1",  # the same host on another port: another origin
    ],
)
def test_a_consent_post_from_another_origin_is_refused_and_sends_nowhere(
    oauth_stack: Stack, browser: Browser, client: OAuthClient, origin: str
) -> None:
    page = browser.get(client.authorize_url(scope="openid"))
    fields = {**form_fields(page.text), "decision": "approve"}
    r = browser.client.post("/oauth/consent", data=fields, headers={"Origin": origin})
    assert r.status_code == 403
    assert "location" not in r.headers
    assert "another site" in r.text
    # The token was right: the same form from the sidecar's page still works.
    done = browser.client.post("/oauth/consent", data=fields)
    assert done.status_code == 303
    assert "code" in query_of(done.headers["location"])


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_without_an_origin_a_post_from_another_site_is_refused_by_sec_fetch_site(
    oauth_stack: Stack, browser: Browser, client: OAuthClient, site: str
) -> None:
    page = browser.get(client.authorize_url(scope="openid"))
    fields = {**form_fields(page.text), "decision": "approve"}
    # A browser that sent no Origin: the same cookies, no Origin header.
    with httpx.Client(base_url=oauth_stack.sidecar.url, cookies=browser.client.cookies) as bare:
        r = bare.post("/oauth/consent", data=fields, headers={"Sec-Fetch-Site": site})
        assert r.status_code == 403
        assert "location" not in r.headers
        ok = bare.post("/oauth/consent", data=fields, headers={"Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 303
        assert "code" in query_of(ok.headers["location"])


def test_a_consent_post_with_the_csrf_token_of_another_person_is_refused(
    oauth_stack: Stack, browser: Browser
) -> None:
    """The retarget: the victim opens Mallory's resume link (the request is
    now bound to the victim) and a post carrying Mallory's token arrives with
    the victim's cookies and a same-origin Origin (a same-site attacker, or a
    browser that sends no Origin). The token was shown to Mallory, not to the
    victim: refused, and no code goes to Mallory's redirect URI."""
    _, mallorys = attackers_consent(oauth_stack)
    victims_page = browser.get(continue_link(oauth_stack, mallorys["request"]))
    assert victims_page.status_code == 200
    assert browser.email in victims_page.text  # shown to the victim, as the victim
    r = browser.client.post("/oauth/consent", data={**mallorys, "decision": "approve"})
    assert r.status_code == 403
    assert "location" not in r.headers
    assert "could not be verified" in r.text
    victims = form_fields(victims_page.text)
    assert victims["request"] == mallorys["request"]
    assert victims["csrf"] != mallorys["csrf"]  # a token of the victim's own


def test_the_first_persons_token_stops_working_once_the_request_is_rebound(
    oauth_stack: Stack, browser: Browser
) -> None:
    """Mallory's own token, posted from Mallory's own session after the
    victim opened the link: refused too (the request is the victim's now)."""
    mallory, mallorys = attackers_consent(oauth_stack)
    assert browser.get(continue_link(oauth_stack, mallorys["request"])).status_code == 200
    r = mallory.client.post("/oauth/consent", data={**mallorys, "decision": "approve"})
    assert r.status_code == 403
    assert "location" not in r.headers


def test_the_same_person_reloading_the_page_keeps_a_working_form(
    browser: Browser, client: OAuthClient
) -> None:
    """Two tabs of one person: the token is minted when the request is bound
    to a person, not on every view, so the first tab's form still works."""
    first = browser.get(client.authorize_url(scope="openid"))
    fields = form_fields(first.text)
    again = browser.get(f"{browser.base}/oauth/authorize/continue?request={fields['request']}")
    assert form_fields(again.text) == fields
    done = browser.consent(first)
    assert done.status_code == 303
    assert "code" in query_of(done.headers["location"])


# -- in Chromium, with a SameSite=None session cookie ----------------------------------


@pytest.fixture(scope="module")
def cross_site_cookie_stack() -> Iterator[Stack]:
    """Better Auth with ``defaultCookieAttributes: {sameSite: "none", secure:
    true}``, as an app whose frontend lives on another site sets it. Chromium
    keeps a Secure cookie for http://127.0.0.1 (a secure context), so no TLS
    is needed for the browser to send it on a cross-site post."""
    stack = start_stack({"COOKIE_SAMESITE": "none"}, {})
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def browser_person(chromium: Any, stack: Stack, name: str) -> tuple[Any, Any, str]:
    """A browser context signed up (and so signed in) through the sidecar."""
    context = chromium.new_context()
    context.set_default_timeout(10_000)
    email = Browser(stack.sidecar.url).sign_up(name).email
    r = context.request.post(
        f"{stack.sidecar.url}/api/auth/sign-in/email",
        data={"email": email, "password": PASSWORD},
        headers={"Origin": stack.sidecar.url},
    )
    assert r.ok, r.text()
    return context, context.new_page(), email


def test_a_cross_site_page_cannot_post_allow_for_a_victim_who_opened_the_attackers_link(
    chromium: Any, cross_site_cookie_stack: Stack
) -> None:
    stack = cross_site_cookie_stack
    base = stack.sidecar.url
    attacker, attacker_page, _ = browser_person(chromium, stack, "Mallory")
    victim, victim_page, victim_email = browser_person(chromium, stack, "Victor")
    try:
        session = [c for c in victim.cookies() if c["name"] == "better-auth.session_token"]
        # Faithful to the exposed setup: the browser will send this cookie
        # on a cross-site POST.
        assert len(session) == 1
        assert session[0]["sameSite"] == "None"
        assert session[0]["secure"]

        client = OAuthClient(base, redirect_uri=ATTACKER_REDIRECT)
        client.register(client_name="Mallory's App")
        attacker_page.goto(base + client.authorize_url(scope="openid email"))
        attacker_page.get_by_role("button", name="Allow").wait_for()
        request_id = attacker_page.locator('input[name="request"]').get_attribute("value")
        csrf = attacker_page.locator('input[name="csrf"]').get_attribute("value")
        assert request_id
        assert csrf

        # Whatever the browser is sent to at the attacker's redirect URI (a
        # listener, not a route: Playwright does not route a redirect's target).
        arrived: list[str] = []
        victim_page.on(
            "request",
            lambda r: arrived.append(r.url) if r.url.startswith(ATTACKER_REDIRECT) else None,
        )
        # The victim opens the link Mallory sent, and does not click anything.
        victim_page.goto(continue_link(stack, request_id))
        victim_page.get_by_role("button", name="Allow").wait_for()
        assert victim_email in victim_page.content()

        # Then visits Mallory's site, which posts Allow with Mallory's token.
        evil = (
            "<!doctype html><html><body>"
            f'<form id="f" method="post" action="{base}/oauth/consent">'
            f'<input type="hidden" name="request" value="{request_id}">'
            f'<input type="hidden" name="csrf" value="{csrf}">'
            '<input type="hidden" name="decision" value="approve"></form>'
            '<script>document.getElementById("f").submit()</script></body></html>'
        )
        victim.route(
            "http://evil.example/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=evil),
        )
        with victim_page.expect_response(f"{base}/oauth/consent") as answered:
            victim_page.goto("http://evil.example/win-a-prize")
        answer = answered.value
        victim_page.wait_for_load_state()
        victim_page.wait_for_timeout(300)
        assert arrived == [], f"a code went to the attacker: {arrived}"
        assert answer.status == 403
        assert "location" not in answer.headers
        # What Chromium sent: the victim's session cookie, from Mallory's origin.
        sent = answer.request.all_headers()
        assert "better-auth.session_token=" in sent.get("cookie", "")
        assert sent.get("origin") == "http://evil.example"
        victim_page.get_by_role("heading", name="Request refused").wait_for()
        assert urlsplit(victim_page.url).netloc == urlsplit(base).netloc
        screenshot(victim_page, "consent-cross-site-post-refused")
    finally:
        attacker.close()
        victim.close()


def test_a_csrf_token_that_is_not_ascii_is_refused_not_a_server_error(
    browser: Browser, client: OAuthClient
) -> None:
    page = browser.get(client.authorize_url(scope="openid"))
    r = browser.consent(page, csrf="é" * 43)
    assert r.status_code == 403
    assert "location" not in r.headers
