"""The allocator thresholds the sidecar sets at start-up (sidecar/runtime/allocator.py):
large body pieces, freed and taken again as responses come and go, no longer
cost fresh pages each time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Sixteen responses in flight, each holding a 1 MiB piece, over and over; the
# minor page faults it took are printed.
CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from sidecar.runtime.allocator import tune_malloc
    assert tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    pieces = [bytes(1 << 20) for _ in range(16)]
    del pieces
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_large_pieces_reuse_the_heap_instead_of_fresh_pages() -> None:
    untuned, tuned = faults("default"), faults("tuned")
    one_round = 16 * 256  # 16 pieces of 256 pages
    # Tuned, the first round's pages serve the other 29 rounds.
    assert tuned < 2 * one_round
    # Untuned, rounds keep giving the heap's top back and faulting it in again.
    assert untuned > 2 * tuned


def test_elsewhere_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.runtime import allocator as memory

    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    assert memory.tune_malloc() is False
