"""The client's address: the peer, or what a trusted proxy in front of the
sidecar says it was (X-Forwarded-For), for per-address limits and the
forwarded headers."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def is_trusted(peer: str | None, trusted: Networks) -> bool:
    if not peer or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def client_address(
    peer: str | None,
    headers: Sequence[tuple[bytes, bytes]],
    trusted: Networks,
) -> str:
    """The client's address for per-IP limits: the peer, or, when the peer is a
    trusted proxy, the nearest X-Forwarded-For entry that is not one."""
    if not is_trusted(peer, trusted):
        return peer or "unknown"
    chain: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            chain.extend(p.strip() for p in value.decode("latin-1").split(","))
    for hop in reversed(chain):
        if hop and not is_trusted(hop, trusted):
            return hop
    return peer or "unknown"
