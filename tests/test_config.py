"""Configuration: TOML plus environment, validated with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.oauth.scopes import expand_scopes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "sidecar.example.toml"


def test_defaults_are_the_embedded_ones() -> None:
    s = load_settings(env={})
    assert s.upstream_url == "http://127.0.0.1:3000"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.public_url == "http://127.0.0.1:8080"
    assert s.issuer == "http://127.0.0.1:8080/oauth"
    assert s.store_url == "sqlite:///./data/sidecar.db"
    assert s.auth_base_path == "/api/auth"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('upstream_url = "http://app:3000"\nport = 9000\n')
    s = load_settings(path, env={"SIDECAR_PORT": "9100", "SIDECAR_PUBLIC_URL": "https://a.test/"})
    assert s.upstream_url == "http://app:3000"
    assert s.port == 9100
    assert s.public_url == "https://a.test"
    assert s.issuer == "https://a.test/oauth"


def test_convex_and_better_auth_variable_names_are_read() -> None:
    s = load_settings(
        env={
            "JWKS": "[]",
            "BETTER_AUTH_SECRET": "s3cret",
            "CONVEX_SITE_URL": "https://x.convex.site/",
        }
    )
    assert s.jwks == "[]"
    assert s.better_auth_secret == "s3cret"
    assert s.session_issuer == "https://x.convex.site"
    s = load_settings(
        env={
            "JWKS": "[1]",
            "SIDECAR_JWKS": "[2]",
            "CONVEX_SITE_URL": "https://a",
            "SIDECAR_SESSION_ISSUER": "https://b",
        }
    )
    assert s.jwks == "[2]"
    assert s.session_issuer == "https://b"


def test_resources_accept_paths_under_the_public_url() -> None:
    s = load_settings(
        env={
            "SIDECAR_PUBLIC_URL": "https://app.test",
            "SIDECAR_RESOURCES": "/api/mcp, https://other.test/mcp/;mode=metadata-only",
        }
    )
    assert [r.url for r in s.resources] == ["https://app.test/api/mcp", "https://other.test/mcp"]


def test_trusted_proxies_are_parsed_as_networks() -> None:
    s = load_settings(env={"SIDECAR_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SIDECAR_PORT": "http"}, "port"),
        ({"SIDECAR_PORT": "70000"}, "port"),
        ({"SIDECAR_UPSTREAM_URL": "ftp://x"}, "upstream_url"),
        ({"SIDECAR_UPSTREAM_URL": "http://x/path"}, "upstream_url"),
        ({"SIDECAR_PUBLIC_URL": "not a url"}, "public_url"),
        ({"SIDECAR_ISSUER": "https://x.test/other"}, "issuer"),
        ({"SIDECAR_STORE_URL": "mysql://x"}, "store_url"),
        ({"SIDECAR_AUTH_BASE_PATH": "api/auth"}, "auth_base_path"),
        ({"SIDECAR_RESOURCES": "https://x.test/mcp#frag"}, "resources"),
        ({"SIDECAR_TRUSTED_PROXIES": "10.0.0.300"}, "trusted_proxies"),
        ({"SIDECAR_PRESERVE_HOST": "maybe"}, "preserve_host"),
        ({"SIDECAR_LOG_LEVEL": "loud"}, "log_level"),
        ({"SIDECAR_UPSTREAM_RESPONSE_TIMEOUT": "nan"}, "upstream_response_timeout"),
        # A scope reaches the X-Sidecar-Scopes header: RFC 6749 NQCHAR only.
        ({"SIDECAR_SCOPES": 'openid mcp"tools'}, "scopes"),
        ({"SIDECAR_SCOPES": "openid mcp\\tools"}, "scopes"),
        ({"SIDECAR_SCOPES": "openid caf\u00e9"}, "scopes"),
        ({"SIDECAR_SCOPES": "openid mcp\x7f"}, "scopes"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env=env)
    assert error.value.key == key


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('upstream = "http://app:3000"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path, env={})
    assert error.value.key == "upstream"


def test_the_example_file_documents_every_key_and_loads() -> None:
    from sidecar.config import Settings

    text = EXAMPLE.read_text()
    for field in Settings.__dataclass_fields__:
        assert f"# {field} =" in text or f"\n{field} =" in text, field
    load_settings(EXAMPLE, env={})


def test_every_key_is_declared_once_with_a_parser_and_an_environment_name() -> None:
    import dataclasses

    from sidecar.config import Settings, env_names

    text = EXAMPLE.read_text()
    for field in dataclasses.fields(Settings):
        assert callable(field.metadata.get("parse")), field.name
        names = env_names(field.name)
        assert names, field.name
        assert all(name.isupper() and name.isidentifier() for name in names), names
        assert f"# {field.name} =" in text or f"\n{field.name} =" in text, field.name
        for name in names:  # SIDECAR_<KEY> is the documented rule; others are noted
            assert name == f"SIDECAR_{field.name.upper()}" or name in text, (field.name, name)


def test_a_default_scope_that_is_not_a_scope_name_names_default_scopes() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env={"SIDECAR_DEFAULT_SCOPES": 'openid mcp"tools'})
    assert error.value.key == "default_scopes"


def test_serving_with_a_static_jwks_needs_the_session_issuer() -> None:
    from sidecar.config import check_serving

    settings = load_settings(env={"JWKS": "[]"})  # reading keys alone needs no issuer
    with pytest.raises(ConfigError) as error:
        check_serving(settings)
    assert error.value.key == "session_issuer"
    assert "CONVEX_SITE_URL" in error.value.message
    check_serving(load_settings(env={"JWKS": "[]", "CONVEX_SITE_URL": "https://x.convex.site"}))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=30,
        cwd=ROOT,
    )


def test_a_bad_value_stops_start_up_with_one_line_and_exit_code_2() -> None:
    result = run_cli("serve", env={"SIDECAR_PORT": "eighty"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "sidecar: configuration error: port (SIDECAR_PORT): must be a whole number, got 'eighty'"
    ]
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_stops_start_up_with_one_line() -> None:
    result = run_cli("serve", "--config", "/nonexistent/sidecar.toml")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "/nonexistent/sidecar.toml" in result.stderr


def test_check_config_prints_the_effective_configuration_with_secrets_redacted(
    tmp_path: Path,
) -> None:
    # check-config now loads the keys as serve does: a JWKS the secret
    # decrypts, and the session issuer that serving with it needs.
    from tools import fixtures
    from tools.processes import free_port

    port = free_port()
    result = run_cli(
        "check-config",
        env={
            "BETTER_AUTH_SECRET": fixtures.SECRET,
            "JWKS": fixtures.text("static-jwks.json"),
            "CONVEX_SITE_URL": fixtures.SITE_URL,
            "SIDECAR_PORT": str(port),
            "SIDECAR_METRICS_PORT": "0",
            "SIDECAR_DATA_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["port"] == port
    assert shown["better_auth_secret"] == "<redacted>"
    assert shown["jwks"] == "<redacted>"
    assert fixtures.SECRET not in result.stdout


def test_a_store_url_the_backend_cannot_use_stops_start_up_with_one_line() -> None:
    # Sentinel needs the service name as its path.
    result = run_cli("serve", env={"SIDECAR_STORE_URL": "redis+sentinel://127.0.0.1:26379"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sidecar: configuration error: store_url (SIDECAR_STORE_URL):")


# -- fail closed: canonical URLs, resources that could not be guarded, scopes --


def test_a_mixed_case_public_url_and_its_resources_share_one_canonical_form() -> None:
    s = load_settings(
        env={"SIDECAR_PUBLIC_URL": "http://LocalHost:18555", "SIDECAR_RESOURCES": "/api/mcp"}
    )
    assert s.public_url == "http://localhost:18555"
    assert s.issuer == "http://localhost:18555/oauth"
    assert s.resources[0].url == "http://localhost:18555/api/mcp"
    assert s.on_public_origin(s.resources[0])


def test_an_absolute_resource_in_another_spelling_of_the_public_url_is_on_it() -> None:
    s = load_settings(
        env={
            "SIDECAR_PUBLIC_URL": "https://app.example.com",
            "SIDECAR_RESOURCES": "HTTPS://App.Example.com:443/api/mcp",
        }
    )
    assert s.resources[0].url == "https://app.example.com/api/mcp"
    assert s.on_public_origin(s.resources[0])


def test_an_enforced_resource_on_another_origin_stops_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            env={
                "SIDECAR_PUBLIC_URL": "https://app.example.com",
                "SIDECAR_RESOURCES": "https://mcp.example.com/mcp",
            }
        )
    assert err.value.key == "resources"
    assert "metadata-only" in err.value.message


def test_a_resource_listed_twice_in_two_spellings_stops_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            env={
                "SIDECAR_PUBLIC_URL": "https://app.example.com",
                "SIDECAR_RESOURCES": "/api/mcp, HTTPS://APP.example.com/api/mcp/",
            }
        )
    assert err.value.key == "resources"


def test_a_resources_scopes_are_offered_by_the_server() -> None:
    s = load_settings(
        env={
            "SIDECAR_RESOURCES": "/api/mcp, /api/admin-mcp;scopes=mcp:admin",
        }
    )
    assert "mcp:admin" in s.scopes
    assert s.resources[1].advertised_scopes == ("mcp:admin",)
    assert s.resources[0].advertised_scopes == ()


def test_offline_access_is_not_a_resource_scope() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"SIDECAR_RESOURCES": "/api/mcp;scopes_supported=offline_access"})
    assert err.value.key == "resources"


def test_scope_includes_read_from_toml_and_the_environment(tmp_path: Path) -> None:
    env = {
        "SIDECAR_RESOURCES": "/api/mcp;scopes=mcp:read;scopes_supported=mcp:admin",
        "SIDECAR_SCOPE_INCLUDES": "mcp:admin=mcp:read",
    }
    s = load_settings(env=env)
    assert expand_scopes(s, ["mcp:admin"]) == {"mcp:admin", "mcp:read"}
    config = tmp_path / "c.toml"
    config.write_text(
        'resources = ["/api/mcp;scopes=mcp:read mcp:write;scopes_supported=mcp:admin"]\n'
        'scope_includes = { "mcp:admin" = ["mcp:write"], "mcp:write" = ["mcp:read"] }\n'
    )
    s = load_settings(config, env={})
    assert expand_scopes(s, ["mcp:admin"]) == {"mcp:admin", "mcp:write", "mcp:read"}


def test_scope_includes_naming_a_scope_no_one_offers_stops_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"SIDECAR_SCOPE_INCLUDES": "mcp:admin=mcp:read"})
    assert err.value.key == "scope_includes"


@pytest.mark.parametrize("key", ["public_url", "issuer"])
def test_plain_http_off_loopback_stops_start_up_unless_allowed(key: str) -> None:
    env = {"SIDECAR_PUBLIC_URL": "https://app.example.com"}
    if key == "public_url":
        env["SIDECAR_PUBLIC_URL"] = "http://app.example.com"
    else:
        env["SIDECAR_ISSUER"] = "http://auth.example.com/oauth"
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert err.value.key == key
    assert "allow_insecure_http" in err.value.message
    allowed = {**env, "SIDECAR_ALLOW_INSECURE_HTTP": "true"}
    if key == "issuer":  # allowed, it is still on another origin than public_url
        allowed["SIDECAR_PUBLIC_URL"] = "http://auth.example.com"
    assert getattr(load_settings(env=allowed), key).startswith("http://")


@pytest.mark.parametrize(
    "public_url", ["http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"]
)
def test_plain_http_on_loopback_is_fine(public_url: str) -> None:
    assert load_settings(env={"SIDECAR_PUBLIC_URL": public_url}).public_url == public_url
