"""One canonical form for every URL compared, and the folded path the
gateway decides on."""

from __future__ import annotations

import pytest

from sidecar.urls import InvalidURL, canonical_url, guard_path


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
    ("path", "folded"),
    [
        ("/api/mcp", "/api/mcp"),
        ("/API/MCP", "/api/mcp"),
        ("//api//mcp/", "/api/mcp"),
        ("/api/x/../mcp", "/api/mcp"),
        ("/api/./mcp", "/api/mcp"),
        ("/api/mcp;jsessionid=1", "/api/mcp"),
        ("/api;x/mcp", "/api/mcp"),
        ("/../api/mcp", "/api/mcp"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_every_spelling_an_app_might_route_folds_to_one_path(path: str, folded: str) -> None:
    assert guard_path(path) == folded
