"""`make demo` runs to the end and shows the tool call as the signed-in user."""

from __future__ import annotations

import subprocess
import sys

from tools.processes import ROOT, node_available, require


def test_the_demo_goes_from_the_bare_url_to_a_tool_call() -> None:
    require(node_available(), "Node or the Better Auth fixture is missing (run `make test`)")
    result = subprocess.run(
        [sys.executable, "demo/run.py"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answered 401 Unauthorized" in result.stdout
    assert "Registered as an OAuth client (DCR)" in result.stdout
    assert "Called whoami: the app sees user user-" in result.stdout
    assert "Convex token route still answers: 200 OK" in result.stdout
