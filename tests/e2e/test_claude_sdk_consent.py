"""The real v2 TypeScript MCP SDK client (`@modelcontextprotocol/client`, the
one Claude Code, claude.ai and Claude Desktop use) connects three times under
one registration for one person, as Claude does on every new connection: the
person is asked to allow it once, not every time.

The SDK (2.4.0) adds `offline_access` to a non-empty scope when the
authorization server's metadata lists it and the client has the refresh_token
grant, and adds `prompt=consent` to every authorization request whose scope
carries `offline_access`: against a server that lists it, every connect asks
for consent. The person must still see the consent page only the first time."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack
from tools.oauth import Browser, form_fields
from tools.processes import ROOT, require

CLIENT_DIR = ROOT / "tests" / "e2e" / "node-mcp-client"
RESOURCES = "/api/mcp;scopes_supported=mcp:tools"
CONNECTS = 3


def client_available() -> bool:
    return (
        shutil.which("node") is not None
        and (CLIENT_DIR / "node_modules" / "@modelcontextprotocol" / "client").is_dir()
    )


@pytest.fixture(scope="module", params=["default", "advertise_offline_access"])
def scoped_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The production shape (reuse mode) with one MCP resource that offers a
    scope, as the README writes it; and the same with offline_access listed
    in the metadata, where the SDK adds it and prompt=consent every time."""
    require(
        client_available(),
        "Node or the MCP client fixture is missing (run `make test`, which installs it with npm)",
    )
    from tools import fixtures

    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "{app}",
    }
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}", **shared},
        {
            "SIDECAR_RESOURCES": RESOURCES,
            "SIDECAR_REGISTRATION_RATE_LIMIT": "1000",
            "SIDECAR_ADVERTISE_OFFLINE_ACCESS": str(request.param != "default").lower(),
            **shared,
        },
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def read_record(process: subprocess.Popen[str], key: str) -> dict[str, Any]:
    """The script's next JSON line; it must carry ``key``."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        assert process.stderr is not None
        pytest.fail(
            f"the MCP client exited with {process.returncode} before printing {key!r}:\n"
            + process.stderr.read()
        )
    record: dict[str, Any] = json.loads(line)
    assert key in record, record
    return record


def connect(
    mcp_url: str, state: Path, browser: Browser, *, forget_tokens: bool
) -> tuple[str, bool, dict[str, Any]]:
    """One run of the SDK client: the authorization URL it built, whether the
    person was shown the consent page, and what it printed after whoami."""
    argv = ["node", "connect.mjs", mcp_url, str(state)]
    if forget_tokens:
        argv.append("--forget-tokens")
    process = subprocess.Popen(
        argv,
        cwd=CLIENT_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        authorize = read_record(process, "authorize")["authorize"]
        page = browser.get(authorize)
        consent_shown = page.status_code == 200 and set(form_fields(page.text)) == {
            "request",
            "csrf",
        }
        if consent_shown:
            page = browser.consent(page)  # Allow
        assert page.status_code in (302, 303), (page.status_code, page.text)
        location = page.headers["location"]
        assert location.startswith(json.loads(state.read_text())["redirectUrl"]), location
        assert process.stdin is not None
        process.stdin.write(location + "\n")
        process.stdin.flush()
        done = read_record(process, "whoami")
        assert process.wait(30) == 0
        return authorize, consent_shown, done
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_claude_reconnecting_under_one_registration_is_asked_for_consent_once(
    scoped_stack: Stack,
) -> None:
    base = scoped_stack.sidecar.url
    mcp_url = f"{base}/api/mcp"
    metadata = httpx.get(f"{base}/.well-known/oauth-authorization-server/oauth").json()
    offers_offline_access = "offline_access" in metadata.get("scopes_supported", [])
    browser = Browser(base).sign_up("Margaret Hamilton")
    user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
    state = Path(tempfile.mkdtemp(prefix="sidecar-mcp-client-")) / "state.json"

    client_ids: list[str] = []
    shown: list[bool] = []
    queries: list[dict[str, list[str]]] = []
    for run in range(CONNECTS):
        authorize, consent_shown, done = connect(mcp_url, state, browser, forget_tokens=True)
        query = parse_qs(urlsplit(authorize).query)
        queries.append(query)
        shown.append(consent_shown)
        print(f"connect {run + 1}: consent page {'shown' if consent_shown else 'not shown'}")
        print(f"connect {run + 1}: authorization query {urlsplit(authorize).query}")

        # What the SDK asks for: the scope the resource offers, with
        # offline_access added exactly when the server's metadata lists it,
        # and prompt=consent exactly when offline_access is asked for.
        scope = query["scope"][0].split()
        expected_scope = ["mcp:tools", "offline_access"] if offers_offline_access else ["mcp:tools"]
        assert scope == expected_scope, query
        assert query.get("prompt") == (["consent"] if "offline_access" in scope else None), query
        assert query["resource"] == [mcp_url], query
        assert query["code_challenge_method"] == ["S256"], query

        # The tool saw the person, under the one registration.
        assert not done["isError"], done
        assert done["whoami"]["userId"] == user_id, done
        assert done["whoami"]["email"] == browser.email, done
        assert done["whoami"]["clientId"] == done["clientId"], done
        assert "mcp:tools" in done["whoami"]["scopes"].split(), done
        client_ids.append(done["clientId"])
        # The tokens were forgotten: the next run authorizes again.
        assert "tokens" not in json.loads(state.read_text())

    assert len(set(client_ids)) == 1, client_ids
    # The person allowed this client once; the later connects go straight back.
    assert shown == [True] + [False] * (CONNECTS - 1), (
        f"consent page shown on {shown.count(True)} of {CONNECTS} connects: {shown}; "
        f"the SDK sent scope={queries[-1]['scope']} prompt={queries[-1].get('prompt')}"
    )
