"""(f) The gateway's cost per guarded request, and what the Convex token adds
(`make bench`): a guarded path on the trivial upstream, c=16, measured side by
side in one run. CPU time of the sidecar per request from /proc/<pid>/stat.

- one access token: the Convex token is minted once and reused (the usual
  case: a client sends the same token for up to an hour);
- a new access token on every request: a Convex token is signed every time
  (the worst case);
- with ``--baseline REV``, the sidecar as it was at REV (before the Convex
  token: the same check, no minting).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.nginx import measure
from bench.tokens import Result
from sidecar.config import load_settings
from sidecar.keys import load_keyset
from tools import fixtures
from tools.checkout import checkout
from tools.processes import Process, running, start_sidecar, start_upstream

LUA = """
local tokens = {}
local counter = 0
function init(args)
  for line in io.lines(args[1]) do table.insert(tokens, line) end
end
function request()
  counter = counter + 1
  local token = tokens[((counter - 1) % #tokens) + 1]
  return wrk.format("GET", "/small", {["Authorization"] = "Bearer " .. token})
end
"""


def keys() -> dict[str, str]:
    return {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "http://127.0.0.1:9",
    }


def access_tokens(sidecar: Process, n: int) -> list[str]:
    keyset = load_keyset(load_settings(env=keys()))
    now = int(time.time())
    return [
        keyset.sign(
            {
                "iss": f"{sidecar.url}/oauth",
                "sub": "bench-user",
                "aud": f"{sidecar.url}/small",
                "client_id": "bench",
                "scope": "",
                "jti": f"bench-{i}-{now}",
                "iat": now,
                "exp": now + 3600,
            },
            typ="at+jwt",
        )
        for i in range(n)
    ]


def load(sidecar: Process, tokens: list[str], seconds: int) -> tuple[Result, float]:
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "tokens.txt").write_text("\n".join(tokens) + "\n")
        (Path(work) / "get.lua").write_text(LUA)
        # One wrk thread: each token is sent once, in order, by one script.
        measured = measure(
            sidecar.url,
            sidecar,
            16,
            seconds,
            ("-s", f"{work}/get.lua"),
            after=(f"{work}/tokens.txt",),
            threads=1,
        )
    return measured.result, measured.cpu_us


def run(seconds: int, baseline: str | None = None) -> None:
    print("\n(f) the gateway on a guarded path (trivial upstream), c=16")
    variants: list[tuple[str, Path | None, int]] = [
        ("one access token (Convex token reused)", None, 1),
        ("a new access token per request (minted)", None, 6000 * seconds),
    ]
    with checkout(baseline) as tree, running(start_upstream()) as upstream:
        if tree is not None and baseline:
            variants.append((f"one access token, baseline {baseline[:10]}", tree, 1))
        for label, cwd, n in variants:
            sidecar = start_sidecar(
                upstream.url,
                cwd=cwd,
                SIDECAR_RESOURCES="/small",
                SIDECAR_LOG_LEVEL="warning",
                **keys(),
            )
            with running(sidecar):
                result, cpu_us = load(sidecar, access_tokens(sidecar, n), seconds)
                print(f"  {label:<46} {result}  CPU {cpu_us:>5.0f} µs/request", flush=True)
