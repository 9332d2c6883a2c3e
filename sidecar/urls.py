"""One canonical form for every URL the sidecar compares.

RFC 3986 section 6.2.2 and 6.2.3: the scheme and host are case-insensitive and
a default port means the same as none, so ``HTTP://LocalHost:80/api/mcp`` and
``http://localhost/api/mcp`` name one resource. The path stays as given (it is
case-sensitive) without a trailing slash. Configuration is turned into this
form once, where it is read; a URL that arrives from outside (``resource``, a
``Host`` header) is turned into it before it is compared, so two spellings can
never make a guarded path look unguarded.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidURL(ValueError):
    """Not an absolute http(s) URL the sidecar can compare."""


def canonical_url(url: str, *, allow_path: bool = True) -> str:
    """``scheme://host[:port][/path]`` with scheme and host lowercased, a
    default port dropped and no trailing slash. Query, fragment and user
    information are refused: none of the URLs compared here may carry them."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidURL(f"{url!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    host = parts.hostname  # already lowercased by urlsplit
    if scheme not in DEFAULT_PORTS or not host:
        raise InvalidURL(f"{url!r} must be an http or https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidURL(f"{url!r} must not carry user information")
    if parts.query or "?" in url:
        raise InvalidURL(f"{url!r} must not have a query")
    if parts.fragment or "#" in url:
        raise InvalidURL(f"{url!r} must not have a fragment")
    path = parts.path.rstrip("/")
    if path and not allow_path:
        raise InvalidURL(f"{url!r} must be an origin without a path")
    shown = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        shown += f":{port}"
    return f"{scheme}://{shown}{path}"


def origin_of(canonical: str) -> str:
    """The origin of a URL already in canonical form."""
    parts = urlsplit(canonical)
    return f"{parts.scheme}://{parts.netloc}"


def is_under(canonical: str, origin: str) -> bool:
    """Whether a canonical URL lies on a canonical origin."""
    return canonical == origin or canonical.startswith(origin + "/")


def guard_path(path: str) -> str:
    """The form of a request path used to decide whether it is guarded.

    Apps route more loosely than a byte comparison: Express matches paths
    case-insensitively by default, many servers collapse ``//`` and resolve
    ``..``, and some cut a segment at ``;``. Deciding on this folded form
    means every spelling an app could route to a guarded path is guarded too
    (fail closed); the request itself still goes upstream byte for byte."""
    segments = [segment.split(";", 1)[0] for segment in path.split("/")]
    folded = posixpath.normpath("/" + "/".join(s for s in segments if s))
    return "/" if folded in ("/", "//") else folded.lower().rstrip("/")
