"""Liveness and readiness probes, under the sidecar's own /oauth namespace so
they never shadow a route of the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

LIVE_PATH = "/oauth/healthz"
READY_PATH = "/oauth/readyz"

# A readiness check returns None when fine, or a short reason when not.
ReadinessCheck = Callable[[], Awaitable[str | None]]


def health_routes(checks: dict[str, ReadinessCheck]) -> list[Route]:
    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def ready(_: Request) -> JSONResponse:
        failures: dict[str, str] = {}
        for name, check in checks.items():
            try:
                problem = await check()
            except Exception as exc:  # a probe must answer, whatever broke
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                failures[name] = problem
        body = {
            "status": "not ready" if failures else "ready",
            "checks": {name: failures.get(name, "ok") for name in checks},
        }
        return JSONResponse(
            body, status_code=503 if failures else 200, headers={"cache-control": "no-store"}
        )

    return [
        Route(LIVE_PATH, live, methods=["GET", "HEAD"]),
        Route(READY_PATH, ready, methods=["GET", "HEAD"]),
    ]
