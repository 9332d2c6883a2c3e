"""Client registration rules (RFC 7591, RFC 8252, RFC 9700)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sidecar.oauth.client_model import (
    client_from_metadata,
    is_valid_client_id,
    redirect_uri_matches,
)
from sidecar.oauth.errors import InvalidClientMetadata, InvalidRedirectUri
from tools.processes import Process, running, start_sidecar

SCOPES = ("openid", "profile", "email", "offline_access")


def register(**metadata):  # type: ignore[no-untyped-def]
    return client_from_metadata({"redirect_uris": ["https://c.test/cb"], **metadata}, SCOPES)


def test_a_missing_auth_method_means_a_public_client() -> None:
    client, secret = register()
    assert client.token_endpoint_auth_method == "none"
    assert secret is None


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_confidential_methods_get_a_secret_stored_hashed(method: str) -> None:
    client, secret = register(token_endpoint_auth_method=method)
    assert secret
    assert client.client_secret_hash
    assert secret not in client.client_secret_hash
    assert client.check_secret(secret)
    assert not client.check_secret(secret + "x")


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/cb",
        "javascript:alert(1)",
        "data:text/html,hi",
        "https://c.test/cb#frag",
        "https://*.c.test/cb",
        "https://c.test/*",
        "https://user@c.test/cb",
        "/relative",
        "file:///etc/passwd",
        "https://c.test/a/../b",
        "https://c.test/a;x=1",
    ],
)
def test_dangerous_redirect_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidRedirectUri):
        register(redirect_uris=[uri])


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:33418/",
        "http://localhost:8080/cb",
        "http://[::1]/cb",
        "https://claude.ai/api/mcp/auth_callback",
        "cursor://anysphere.cursor-retrieval/oauth",
        "com.example.app:/callback",
    ],
)
def test_what_real_clients_register_is_accepted(uri: str) -> None:
    client, _ = register(redirect_uris=[uri], application_type="native")
    assert client.redirect_uris == [uri]


@pytest.mark.parametrize(
    "metadata",
    [
        {"grant_types": ["implicit"]},
        {"response_types": ["token"]},
        {"scope": "admin"},
        {"application_type": "tv"},
        {"client_name": 5},
        {"client_name": "Evil\r\nX-Sidecar-User-Id: admin"},
        {"client_name": "Evil\x00"},
        {"client_name": "Evil\x1b[2J"},  # a terminal escape for whoever reads the log
    ],
)
def test_unsupported_metadata_is_refused(metadata: dict) -> None:
    with pytest.raises(InvalidClientMetadata):
        register(**metadata)


def test_loopback_redirects_match_on_any_port_and_nothing_else_does() -> None:
    registered = ["http://127.0.0.1:33418/cb", "https://c.test/cb"]
    assert redirect_uri_matches(registered, "http://127.0.0.1:50123/cb")
    assert not redirect_uri_matches(registered, "http://127.0.0.1:50123/cb2")
    assert not redirect_uri_matches(registered, "https://c.test:8443/cb")
    assert not redirect_uri_matches(registered, "https://C.test/cb")
    assert not redirect_uri_matches(registered, "https://c.test/cb/")
    assert not redirect_uri_matches(registered, "http://127.0.0.1.evil.test:1/cb")


def test_registration_is_rate_limited_per_ip(upstream: Process) -> None:
    with running(start_sidecar(upstream.url, SIDECAR_REGISTRATION_RATE_LIMIT="3")) as sidecar:
        body = {"redirect_uris": ["http://127.0.0.1:1/cb"]}
        codes = [
            httpx.post(sidecar.url + "/oauth/register", json=body).status_code for _ in range(5)
        ]
        assert codes == [201, 201, 201, 429, 429]
        limited = httpx.post(sidecar.url + "/oauth/register", json=body)
        assert 1 <= int(limited.headers["retry-after"]) <= 60  # until the window ends
        assert limited.json()["error"] == "slow_down"


def test_registration_errors_use_rfc7591_codes(sidecar: Process) -> None:
    bad = httpx.post(sidecar.url + "/oauth/register", json={"redirect_uris": ["http://x.test/"]})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_redirect_uri"
    junk = httpx.post(sidecar.url + "/oauth/register", content=b"{not json")
    assert junk.json()["error"] == "invalid_client_metadata"


def test_clients_are_durable_across_a_restart(upstream: Process, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/clients.db"
    with running(start_sidecar(upstream.url, SIDECAR_STORE_URL=store)) as first:
        client_id = httpx.post(
            first.url + "/oauth/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"]}
        ).json()["client_id"]
    with running(start_sidecar(upstream.url, SIDECAR_STORE_URL=store)) as second:
        r = httpx.post(
            second.url + "/oauth/token",
            data={
                "client_id": client_id,
                "grant_type": "authorization_code",
                "code": "x",
                "code_verifier": "y" * 43,
            },
        )
        assert r.json()["error"] == "invalid_grant"  # known client, bad code


def test_the_clients_command_adds_lists_and_removes(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_STORE_URL": f"sqlite:///{tmp_path}/c.db"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "clients", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    added = cli(
        "add",
        "--name",
        "Internal tool",
        "--redirect-uri",
        "https://tool.test/cb",
        "--confidential",
        "--create",  # the first command on a new store says it means to make one
    )
    assert added.returncode == 0, added.stderr
    client_id = added.stdout.split("client_id: ")[1].split()[0]
    assert "client_secret: " in added.stdout
    listed = cli("list")
    assert client_id in listed.stdout
    assert "Internal tool" in listed.stdout
    assert cli("add", "--name", "x", "--redirect-uri", "http://evil.test/").returncode == 1
    assert cli("remove", client_id).returncode == 0
    assert client_id not in cli("list").stdout
    keyed = cli(
        "add",
        "--name",
        "Keyed",
        "--redirect-uri",
        "https://tool.test/cb",
        "--jwks-uri",
        "https://tool.test/jwks.json",
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "client_secret" not in keyed.stdout  # its keys are its credential
    assert "private_key_jwt" in cli("list").stdout
    bad = cli(
        "add", "--name", "x", "--redirect-uri", "https://tool.test/cb", "--jwks-uri", "ftp://x"
    )
    assert bad.returncode == 1


@pytest.mark.parametrize(
    "metadata",
    [
        {"token_endpoint_auth_method": "private_key_jwt"},  # no keys: could never sign in
        {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": []}},
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},  # a shared secret is no key
        },
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": "https://x.test/jwks",
            "token_endpoint_auth_signing_alg": "HS256",
        },
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": "https://x.test/jwks",
            "jwks": {"keys": []},
        },
    ],
)
def test_private_key_jwt_without_usable_keys_is_refused(metadata: dict) -> None:
    with pytest.raises(InvalidClientMetadata):
        register(**metadata)


def test_metadata_the_server_does_not_know_is_ignored() -> None:
    # RFC 7591 section 2: unknown fields and grant types we do not offer are
    # ignored (Lovable's and others' documents carry them).
    client, _ = client_from_metadata(
        {
            "redirect_uris": ["https://app.example/cb"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types": ["code", "id_token"],
            "logo_uri": "https://app.example/logo.png",
            "software_statement": "eyJ...",
            "tos_uri": "https://app.example/tos",
        },
        (),
    )
    assert client.grant_types == ["authorization_code", "refresh_token"]


@pytest.mark.parametrize(
    "client_id",
    ["a\r\nb", "a\nb", "a\x00b", "a b", "a\tb", "caf\u00e9", "a\x7f", "", "x" * 2001],
)
def test_a_client_id_with_control_characters_spaces_or_non_ascii_is_unknown(
    client_id: str,
) -> None:
    assert not is_valid_client_id(client_id)
    with pytest.raises(InvalidClientMetadata):
        client_from_metadata({"redirect_uris": ["https://app.example/cb"]}, (), client_id=client_id)


def test_ordinary_and_metadata_url_client_ids_are_valid() -> None:
    for client_id in ("Qx3v_-abc", "https://claude.ai/oauth/mcp-oauth-client-metadata", "x" * 2000):
        assert is_valid_client_id(client_id)
