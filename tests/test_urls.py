"""One canonical form for every URL compared, and every spelling of a
request path an app could route."""

from __future__ import annotations

import pytest

from sidecar.urls import (
    MAX_ODD_PATH,
    MAX_SPELLINGS,
    InvalidURL,
    TooManySpellings,
    canonical_url,
    is_ambiguous,
    path_spellings,
)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("http://LocalHost:18555", "http://localhost:18555"),
        ("HTTP://LOCALHOST:18555/api/mcp", "http://localhost:18555/api/mcp"),
        ("https://App.Example.com:443/api/mcp/", "https://app.example.com/api/mcp"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("https://app.example.com/API/Mcp", "https://app.example.com/API/Mcp"),
    ],
)
def test_scheme_and_host_are_lowercased_and_default_ports_dropped(
    given: str, canonical: str
) -> None:
    assert canonical_url(given) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://x",
        "/api/mcp",
        "https://user@app.example.com/",
        "https://app.example.com/mcp#frag",
        "https://app.example.com/mcp?x=1",
        "https://app.example.com:99999/",
        "not a url",
    ],
)
def test_urls_that_cannot_be_compared_are_refused(bad: str) -> None:
    with pytest.raises(InvalidURL):
        canonical_url(bad)


def test_an_origin_with_a_path_is_refused_where_only_an_origin_will_do() -> None:
    with pytest.raises(InvalidURL):
        canonical_url("https://app.example.com/base", allow_path=False)


@pytest.mark.parametrize(
    "bad",
    [
        "https://app.example.com/mcp\r\nX-Injected: 1",
        "https://app.example.com/mcp\n",
        "https://app.example.com/mcp\r",
        "https://app.example.com/m\x00cp",
        "https://app.exa\tmple.com/mcp",
        "\thttps://app.example.com/mcp",
        "https://app.example.com/mcp\x7f",
        "https://app.example.com/m cp",
        " https://app.example.com/mcp",
        "https://app.example.com/mcp ",
        "https://app.example.com/caf\u00e9",
        "https://b\u00fccher.example/mcp",
        "https://app.example.com/\u2028",
        "https://app.example.com\\@evil.example/",
    ],
)
def test_a_url_with_a_control_character_space_or_non_ascii_anywhere_is_refused(bad: str) -> None:
    # urlsplit would drop CR, LF and TAB silently and compare what is left.
    with pytest.raises(InvalidURL):
        canonical_url(bad)


@pytest.mark.parametrize(
    ("path", "spelling"),
    [
        ("/api/mcp", "/api/mcp"),
        ("/API/MCP", "/api/mcp"),
        ("//api//mcp/", "/api/mcp/"),
        ("/api/x/../mcp", "/api/mcp"),
        ("/api/./mcp", "/api/mcp"),
        ("/api/mcp;jsessionid=1", "/api/mcp"),
        ("/api;x/mcp", "/api/mcp"),
        ("/../api/mcp", "/api/mcp"),
        ("/api/mcp/../x", "/api/x"),
        ("/api/mcp/../x", "/api/mcp/../x"),
        ("/api/mcp/..;/x", "/api/x"),
        ("/api/mcp/..%2fx", "/api/x"),
        ("/api/mcp/..%2Fx", "/api/mcp/..%2fx"),
        ("/api/mcp/%2e%2e/x", "/api/x"),
        ("/api/mcp/.%2E/x", "/api/x"),
        ("/api/mcp//..", "/api/mcp/"),
        ("/api/mcp//..", "/api/"),
        ("/api/mcp\\..\\x", "/api/x"),
        ("/api/mcp%5c..%5cx", "/api/x"),
        ("/api/mcp/%252e%252e/x", "/api/x"),
        ("/x/..%2fapi/mcp", "/api/mcp"),
        ("/x/%2e%2e/api/mcp", "/api/mcp"),
        ("/api/%6Dcp", "/api/mcp"),
        ("/api/mcp-admin/../mcp", "/api/mcp-admin/../mcp"),
        ("/api/mcp-admin/../mcp", "/api/mcp"),
        ("/api/m%09cp", "/api/mcp"),
        ("api/mcp", "/api/mcp"),
    ],
)
def test_every_spelling_an_app_might_route_is_among_the_spellings(path: str, spelling: str) -> None:
    assert spelling in path_spellings(path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/mcp",
        "/API/Mcp/tools",
        "/static/a..b.js",
        "/static/.hidden",
        "/api/mcp;x",
        "//api//mcp",
        "/api/%6dcp",
        "/caf%C3%A9",
        "/",
    ],
)
def test_a_path_every_router_resolves_to_itself_is_not_ambiguous(path: str) -> None:
    assert not is_ambiguous(path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/mcp/../x",
        "/api/mcp/..;/x",
        "/api/mcp/..%2fx",
        "/api/mcp/..%2Fx",
        "/api/mcp/%2e%2e/x",
        "/api/mcp//..",
        "/api/mcp/.%2e/x",
        "/api/mcp/./x",
        "/api/mcp/.",
        "/api/mcp\\x",
        "/api/mcp%5cx",
        "/api/mcp%2fx",
        "/api/mcp/a%2ejs",
        "/api/mcp/%252e%252e/x",
        "/api/m%09cp",
        "/api/m%00cp",
        "api/mcp",
        "/x/..%2fapi/mcp",
    ],
)
def test_a_path_that_resolves_differently_from_what_was_sent_is_ambiguous(path: str) -> None:
    assert is_ambiguous(path)


def test_an_ordinary_path_has_one_spelling_its_lowercase() -> None:
    assert set(path_spellings("/Api/MCP/tools/List")) == {"/api/mcp/tools/list"}


def test_a_path_with_more_spellings_than_the_limit_is_refused_not_enumerated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    odd = "/a/%252e%252e;x\\\\y//z/."
    assert len(path_spellings(odd)) > 4
    monkeypatch.setattr("sidecar.urls.MAX_SPELLINGS", 4)
    with pytest.raises(TooManySpellings):
        path_spellings(odd)
    assert is_ambiguous(odd)


def test_a_long_path_that_is_not_plain_is_refused_not_enumerated() -> None:
    with pytest.raises(TooManySpellings):
        path_spellings("/api/" + "%41" * (MAX_ODD_PATH // 3 + 1))
    assert path_spellings("/api/" + "a" * MAX_ODD_PATH) == {"/api/" + "a" * MAX_ODD_PATH}


def test_a_few_odd_rules_together_stay_well_below_the_limit() -> None:
    odd = "/" + "/".join(["%252e%252e;x\\\\%2f."] * 40)
    assert len(path_spellings(odd)) < MAX_SPELLINGS / 10


def test_loopback_hosts_are_localhost_and_the_loopback_addresses() -> None:
    from sidecar.urls import is_loopback

    for host in ("localhost", "127.0.0.1", "127.8.9.10", "::1"):
        assert is_loopback(host), host
    for host in (None, "", "localhost.example", "10.0.0.1", "[::1]", "0.0.0.0", "::"):
        assert not is_loopback(host), host
