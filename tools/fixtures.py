"""The real Better Auth + convex() values in shared/fixtures/better-auth."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tools.processes import IN_CI, ROOT

SECRET = "fixture-secret-3b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e"
SECRETS = (
    "2:fixture-rotated-secret-9a8b7c6d5e4f3a2b1c0d,"
    "1:fixture-secret-3b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e"
)
SITE_URL = "http://localhost:3290"


def fixtures_dir() -> Path:
    candidates = [
        Path(os.environ.get("SIDECAR_SHARED_DIR", "")) / "fixtures" / "better-auth",
        ROOT.parent / "shared" / "fixtures" / "better-auth",
        Path("/work/shared/fixtures/better-auth"),
    ]
    for path in candidates:
        if (path / "static-jwks.json").is_file():
            return path
    if IN_CI:
        pytest.fail("shared/fixtures/better-auth is missing beside the checkout")
    pytest.skip("shared/fixtures/better-auth is not beside this checkout")
    raise AssertionError  # unreachable


def text(name: str) -> str:
    return (fixtures_dir() / name).read_text()


def load(name: str) -> Any:
    return json.loads(text(name))
