"""A real browser for tests: Playwright for Python driving Debian's Chromium.

Playwright cannot download its own browsers on these machines, so it launches
the system's ``chromium`` by path. Without it the browser tests skip with a
reason on a developer's machine and fail under ``CI=true``, like the Node ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.processes import require

CHROMIUM_FLAGS = [
    # As root in a container there is no sandbox to drop into; the rest keep
    # Chromium from calling out to a network this machine does not have.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in (os.environ.get("SIDECAR_CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    return None


SCREENSHOTS = Path(
    os.environ.get("SIDECAR_SCREENSHOTS") or tempfile.mkdtemp(prefix="sidecar-screens-")
)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop of its own
    while it runs, which the anyio tests of other modules must not meet."""
    path = chromium_path()
    require(path is not None, "Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
