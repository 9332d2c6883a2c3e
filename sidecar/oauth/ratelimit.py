"""Fixed-window rate limits whose counters live in the store, so a limit holds
across every replica and worker sharing it.

Two kinds. ``check`` counts every request and refuses past the limit (the
authorization endpoint per address, refreshes per grant). ``count_failure``
counts only refused requests and, once a key reaches its limit, blocks it
until the window ends (``refuse_if_blocked``): one client_id serves every
install of a popular client and hosted clients call from a small egress pool,
so successful token requests must not throttle them as one, while guessing
(bad codes, refresh tokens, secrets or assertions) still is.
"""

from __future__ import annotations

import ipaddress
import time

import structlog
from starlette.requests import Request

from sidecar.config import Settings
from sidecar.edge.address import client_address, is_trusted
from sidecar.expiring import ExpiringCache
from sidecar.oauth.errors import SlowDown
from sidecar.observability.metrics import RATE_LIMITED
from sidecar.store import Store

log = structlog.get_logger("sidecar.oauth")

WINDOW = 60  # seconds
NS_COUNT, NS_BLOCK = "rate", "rate-block"


def _retry_after(now: float) -> int:
    return max(1, int((int(now // WINDOW) + 1) * WINDOW - now))


BLOCK_CACHE_SECONDS = 1.0  # how late a block set by another replica may be seen
BLOCK_CACHE_SIZE = 10_000


class RateLimiter:
    def __init__(self, store: Store) -> None:
        self.store = store
        # "kind:key" -> (monotonic time until which the answer holds, blocked
        # until this wall-clock time or 0): a popular client's every token
        # request asks whether its address and its client_id are blocked,
        # and one store read a second per key answers all of them.
        self._blocks: ExpiringCache[str, float] = ExpiringCache(BLOCK_CACHE_SIZE)

    def refuse(self, limit: str, family: str, retry_after: int) -> SlowDown:
        """The 429 names the limit that fired, in its metric and a log line."""
        RATE_LIMITED.labels(limit=limit, client_family=family).inc()
        log.warning("rate limit reached", limit=limit, client_family=family)
        return SlowDown(
            f"too many requests ({limit}); try again later",
            headers={"Retry-After": str(retry_after)},
        )

    async def check(self, kind: str, key: str, limit: int, family: str = "") -> None:
        """Count one request; over ``limit`` in this minute raises SlowDown
        (429) with Retry-After until the window ends. 0 means no limit."""
        if limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW)
        count = await self.store.incr(NS_COUNT, f"{kind}:{key}:{window}", ttl=WINDOW)
        if count > limit:
            raise self.refuse(kind, family, _retry_after(now))

    async def refuse_if_blocked(self, kind: str, key: str, family: str = "") -> None:
        """A 429 while ``key`` has used up its failures for this minute."""
        name = f"{kind}:{key}"
        now = time.time()
        until = self._blocks.get(name, time.monotonic())
        if until is None:
            record = await self.store.get(NS_BLOCK, name)
            until = float(record.get("until", now + 1)) if record is not None else 0.0
            self._blocks.put(name, until, time.monotonic() + BLOCK_CACHE_SECONDS)
        if until > now:
            raise self.refuse(kind, family, _retry_after(now))

    async def count_failure(self, kind: str, key: str, limit: int) -> None:
        """One refused request; the ``limit``-th blocks ``key`` until the
        window ends."""
        if limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW)
        count = await self.store.incr(NS_COUNT, f"{kind}:{key}:{window}", ttl=WINDOW)
        if count == limit:
            until = (window + 1) * WINDOW
            await self.store.put(NS_BLOCK, f"{kind}:{key}", {"until": until}, ttl=_retry_after(now))
            self._blocks.put(f"{kind}:{key}", until, time.monotonic() + BLOCK_CACHE_SECONDS)


def client_ip(request: Request, settings: Settings) -> str:
    peer = request.client.host if request.client else None
    return client_address(peer, request.scope["headers"], settings.trusted_proxies)


def is_trusted_egress(
    address: str, egress: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """An address an operator named in ``trusted_client_egress`` (a hosted
    client's egress pool): no per-address limit at the token endpoint."""
    return is_trusted(address, egress)
