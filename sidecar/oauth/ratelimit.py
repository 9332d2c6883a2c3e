"""Fixed-window rate limits whose counters live in the store, so a limit holds
across every replica and worker sharing it."""

from __future__ import annotations

import time

from starlette.requests import Request

from sidecar.config import Settings
from sidecar.oauth.errors import SlowDown
from sidecar.proxy.headers import client_address
from sidecar.store import Store

WINDOW = 60  # seconds


class RateLimiter:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def check(self, kind: str, key: str, limit: int) -> None:
        """Count one request; over ``limit`` in this minute raises SlowDown
        (429) with Retry-After until the window ends. 0 means no limit."""
        if limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW)
        count = await self.store.incr("rate", f"{kind}:{key}:{window}", ttl=WINDOW)
        if count > limit:
            retry_after = max(1, int((window + 1) * WINDOW - now))
            raise SlowDown(
                "too many requests; try again later", headers={"Retry-After": str(retry_after)}
            )


def client_ip(request: Request, settings: Settings) -> str:
    peer = request.client.host if request.client else None
    return client_address(peer, request.scope["headers"], settings.trusted_proxies)
