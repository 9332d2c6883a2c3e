"""The listening sockets, bound before anything else starts.

One process or a supervisor of several: the sockets are bound here, before
the app's start-up runs, so that a port in use ends the process with one line
naming the key to change (and exit code 3, as every start-up failure) instead
of uvicorn's bind error between the app's start-up and shutdown lines.

The addresses are those asyncio's ``create_server(host, port)`` (what uvicorn
calls on its own) would listen on: every address the host resolves to, IPv6
ones IPv6 only.
"""

from __future__ import annotations

import errno
import socket

from sidecar.config import env_names

EXIT_STARTUP_FAILED = 3  # as uvicorn's own start-up failure, and the metrics listener's


class ListenError(Exception):
    """The sockets could not be bound; the message names the key to change."""


def key(name: str) -> str:
    return f"{name} ({' or '.join(env_names(name))})"


def listen_error(host: str, port: int, exc: OSError) -> str:
    """What an operator reads: which address, why, and which setting."""
    if isinstance(exc, socket.gaierror):
        return f"host {host!r} does not resolve ({exc.strerror}): set {key('host')}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host}: set {key('port')} to a free port"
    if exc.errno == errno.EACCES:
        return (
            f"port {port} on {host} needs privileges this process lacks: "
            f"set {key('port')} to 1024 or above"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: set {key('host')}"
    return (
        f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
        f"check {key('host')} and {key('port')}"
    )


def bind_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to; inheritable,
    so that forked workers accept on them too. Raises ListenError."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        seen = set()
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(listen_error(host, port, exc)) from None
    return sockets
