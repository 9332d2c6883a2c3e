"""The sidecar as it was at another git revision, checked out beside this
one while it is needed: a benchmark's baseline (`--baseline REV`, measured in
the same run) or a previous release an upgrade test starts."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tools.processes import ROOT


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[Path | None]:
    """A worktree of ``rev`` (removed afterwards), or None without one."""
    if not rev:
        yield None
        return
    tree = Path(tempfile.mkdtemp(prefix="sidecar-baseline-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )
