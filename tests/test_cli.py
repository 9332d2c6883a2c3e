"""The ``sidecar`` command set up wrong in one way at a time: refused with one
line naming the key (or warned), and the same setup done right accepted."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import fixtures
from tools.processes import (
    Process,
    free_port,
    redis_available,
    require,
    signing_key_file,
    start_redis,
)

ROOT = Path(__file__).resolve().parents[1]
UNWRITABLE = "/proc/sidecar-nope"  # not even root creates a directory here


def sidecar(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
        cwd=cwd,
    )


def refused(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one line a refused start-up prints."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def base(tmp_path: Path) -> dict[str, str]:
    """A setup that works: its own data directory and free ports."""
    return {
        "SIDECAR_DATA_DIR": str(tmp_path / "data"),
        "SIDECAR_PORT": str(free_port()),
        "SIDECAR_METRICS_PORT": "0",
    }


REUSE = {
    "JWKS": fixtures.text("static-jwks.json"),
    "BETTER_AUTH_SECRET": fixtures.SECRET,
    "CONVEX_SITE_URL": fixtures.SITE_URL,
}


@pytest.fixture(scope="module")
def redis() -> Iterator[Process]:
    require(redis_available(), "redis-server is not installed")
    server = start_redis()
    yield server
    server.stop()


def test_an_empty_jwks_with_a_shared_store_is_refused_not_taken_as_unset(
    base: dict[str, str], redis: Process
) -> None:
    store = {"SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis.port}/0"}
    for name in ("JWKS", "SIDECAR_JWKS"):
        line = refused(sidecar("serve", env={**base, **REUSE, **store, name: ""}))
        assert f"configuration error: jwks ({name}): is set but empty" in line
    done_right = sidecar("check-config", env={**base, **REUSE, **store})
    assert done_right.returncode == 0, done_right.stderr


def test_generated_keys_with_a_shared_store_are_refused(
    base: dict[str, str], redis: Process
) -> None:
    # Two replicas would each generate a key and refuse the other's tokens.
    store = {"SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis.port}/0"}
    line = refused(sidecar("serve", env={**base, **store}))
    assert line.startswith("sidecar: configuration error: jwks (SIDECAR_JWKS / JWKS):")
    assert "signing_key_file" in line
    assert "BETTER_AUTH_SECRET" in line
    keyed = {**base, **store, "SIDECAR_SIGNING_KEY_FILE": signing_key_file()}
    assert sidecar("check-config", env=keyed).returncode == 0
    assert sidecar("check-config", env={**base, **store, **REUSE}).returncode == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_an_upstream_that_is_the_sidecar_itself_is_refused(base: dict[str, str], host: str) -> None:
    own = {**base, "SIDECAR_UPSTREAM_URL": f"http://{host}:{base['SIDECAR_PORT']}"}
    line = refused(sidecar("serve", env=own))
    assert "upstream_url (SIDECAR_UPSTREAM_URL):" in line
    assert "own listener" in line
    public = {
        **base,
        "SIDECAR_PUBLIC_URL": "https://app.example.com",
        "SIDECAR_UPSTREAM_URL": "https://app.example.com",
    }
    assert "public_url" in refused(sidecar("serve", env=public))
    elsewhere = {**base, "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}"}
    assert sidecar("check-config", env=elsewhere).returncode == 0


def test_an_issuer_on_another_origin_is_refused(base: dict[str, str]) -> None:
    env = {**base, "SIDECAR_PUBLIC_URL": "https://app.example.com"}
    line = refused(sidecar("serve", env={**env, "SIDECAR_ISSUER": "https://b.example.com/oauth"}))
    assert "issuer (SIDECAR_ISSUER):" in line
    assert "public_url" in line
    same = {**env, "SIDECAR_ISSUER": "https://APP.example.com/oauth"}
    assert sidecar("check-config", env=same).returncode == 0


def test_an_unknown_sidecar_variable_is_warned_with_the_closest_key(
    base: dict[str, str],
) -> None:
    result = sidecar("check-config", env={**base, "SIDECAR_UPSTREAM": "http://app:3000"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "sidecar: warning: SIDECAR_UPSTREAM is not a setting and is ignored; "
        "did you mean SIDECAR_UPSTREAM_URL?"
    ]
    assert sidecar("check-config", env=base).stderr == ""


def test_check_config_refuses_a_jwks_the_secret_cannot_decrypt(base: dict[str, str]) -> None:
    wrong = {**base, **REUSE, "BETTER_AUTH_SECRET": "not-the-secret-" + "x" * 20}
    line = refused(sidecar("check-config", env=wrong))
    assert "configuration error: jwks" in line
    assert sidecar("check-config", env={**base, **REUSE}).returncode == 0


def test_check_config_refuses_a_data_dir_that_cannot_be_created(base: dict[str, str]) -> None:
    line = refused(sidecar("check-config", env={**base, "SIDECAR_DATA_DIR": UNWRITABLE}))
    assert line.startswith("sidecar: configuration error: data_dir (SIDECAR_DATA_DIR):")
    assert UNWRITABLE in line


def test_check_config_refuses_a_port_in_use(base: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = refused(sidecar("check-config", env={**base, "SIDECAR_PORT": str(port)}), 3)
    assert f"port {port} is in use" in line
    assert "port (SIDECAR_PORT)" in line
    assert sidecar("check-config", env={**base, "SIDECAR_PORT": str(port)}).returncode == 0


def test_an_unopenable_store_names_store_url_and_the_path(base: dict[str, str]) -> None:
    env = {**base, "SIDECAR_STORE_URL": f"sqlite:///{UNWRITABLE}/sidecar.db"}
    line = refused(sidecar("check-config", env=env), 3)
    assert "store_url (SIDECAR_STORE_URL)" in line
    assert f"{UNWRITABLE}/sidecar.db" in line


def test_data_dir_moves_the_default_store(base: dict[str, str], tmp_path: Path) -> None:
    data = base["SIDECAR_DATA_DIR"]
    work = tmp_path / "work"  # the working directory is not where state goes
    work.mkdir()
    shown = json.loads(sidecar("check-config", env=base).stdout)
    assert shown["store_url"] == f"sqlite:///{data}/sidecar.db"
    added = sidecar("clients", "add", "--name", "x", "--redirect-uri", "http://127.0.0.1:1/cb",
                    "--create", env=base, cwd=work)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert (Path(data) / "sidecar.db").is_file()
    assert list(work.iterdir()) == []


def test_the_operator_cli_from_another_directory_names_its_store_and_creates_none(
    base: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"SIDECAR_METRICS_PORT": "0"}
    for command in (("grants", "list"), ("clients", "list"), ("keys", "list")):
        line = refused(sidecar(*command, env=env, cwd=elsewhere))
        assert str(elsewhere / "data") in line
        assert "--create" in line
    assert list(elsewhere.iterdir()) == []
    # Done right: --config (after the subcommand) names the data directory.
    config = tmp_path / "sidecar.toml"
    config.write_text(f'data_dir = "{base["SIDECAR_DATA_DIR"]}"\n')
    made = sidecar("clients", "list", "--create", "--config", str(config), cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    listed = sidecar("grants", "list", "--config", str(config), cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    store = f"sqlite:///{base['SIDECAR_DATA_DIR']}/sidecar.db"
    assert listed.stderr.strip().splitlines() == [f"sidecar: store {store} ({store[10:]})"]
    before = sidecar("--config", str(config), "grants", "list", cwd=elsewhere)
    assert before.returncode == 0
    assert before.stderr == listed.stderr
    assert list(elsewhere.iterdir()) == []


def test_version_and_help_on_every_flag() -> None:
    from importlib.metadata import version

    result = sidecar("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sidecar {version('convex-oauth-sidecar')}"
    from sidecar.cli import build_parser

    def walk(parser: object) -> Iterator[object]:
        yield parser
        for action in parser._actions:  # type: ignore[attr-defined]
            for child in (getattr(action, "choices", None) or {}).values():
                if hasattr(child, "_actions"):
                    yield from walk(child)

    for parser in walk(build_parser()):
        if parser.prog.endswith(" doctor"):  # type: ignore[attr-defined]
            continue  # the doctor's parser is another room's
        for action in parser._actions:  # type: ignore[attr-defined]
            if isinstance(action, argparse._SubParsersAction):
                continue  # each subcommand's help is checked on its own parser
            assert action.help, (parser.prog, action.dest)  # type: ignore[attr-defined]
