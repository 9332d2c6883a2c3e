"""One canonical form for every URL the sidecar compares.

RFC 3986 section 6.2.2 and 6.2.3: the scheme and host are case-insensitive and
a default port means the same as none, so ``HTTP://LocalHost:80/api/mcp`` and
``http://localhost/api/mcp`` name one resource. The path stays as given (it is
case-sensitive) without a trailing slash. Configuration is turned into this
form once, where it is read; a URL that arrives from outside (``resource``, a
``Host`` header) is turned into it before it is compared, so two spellings can
never make a guarded path look unguarded.

A request path is different: the sidecar forwards it byte for byte, and the
app behind it routes it by its own rules. :func:`path_spellings` is every
form an app may act on, and :func:`is_ambiguous` says whether those forms
resolve differently from what was sent.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 section 2: a URI is printable ASCII without space. Anything else
# urlsplit either drops without a word (TAB, CR, LF) or keeps as is, so a
# value carrying it must be refused before it is parsed; a backslash is
# refused too, as WHATWG parsers read it as "/".
_NOT_IN_A_URL = re.compile(r"[^\x21-\x7e]|\\")


class InvalidURL(ValueError):
    """Not an absolute http(s) URL the sidecar can compare."""


def is_loopback(host: str | None) -> bool:
    """A host name that stays on this machine (RFC 8252 section 7.3):
    ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def canonical_url(url: str, *, allow_path: bool = True) -> str:
    """``scheme://host[:port][/path]`` with scheme and host lowercased, a
    default port dropped and no trailing slash. Query, fragment and user
    information are refused: none of the URLs compared here may carry them,
    nor a control character, space, backslash or non-ASCII character anywhere
    (a caller strips the whitespace around a configured value first)."""
    if _NOT_IN_A_URL.search(url):
        raise InvalidURL(f"{url!r} holds a character no URL may carry (RFC 3986 section 2)")
    try:
        parts = urlsplit(url)
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


_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|2e)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_EMPTY_SEGMENTS = re.compile(r"//+")
# Past this many spellings a path was built to multiply them: it is refused
# (TooManySpellings) rather than enumerated.
MAX_SPELLINGS = 1024
# Likewise a path this long that is not plain: enumerating its spellings
# would cost more than any honest request is worth.
MAX_ODD_PATH = 8192


class TooManySpellings(ValueError):
    """A path with more spellings than are worth enumerating: no app routes
    one honestly, so it is refused rather than decided on a partial list."""


def _plain(raw: str) -> bool:
    """Whether a raw path has one spelling, its lowercase: no percent
    decoding, ``;`` parameter, backslash, empty or dot segment (a dot segment
    always follows a ``/``) or control character. Plain ``in`` tests: this
    runs for every proxied request."""
    return (
        raw[:1] == "/"
        and "%" not in raw
        and ";" not in raw
        and "\\" not in raw
        and "//" not in raw
        and "/." not in raw
        and raw.isprintable()
    )


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, as WHATWG URL parsers, Next.js and most
    servers apply it (an empty segment is kept, so ``/a//..`` is ``/a/``)."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    resolved = "/".join(out)
    return resolved if resolved.startswith("/") or not path.startswith("/") else "/" + resolved


def _rewrites(path: str) -> list[str]:
    """One step of each rule some router applies before it matches."""
    out = [_remove_dot_segments(path)]
    if "%" in path:
        out.append(unquote(path))  # and twice, through the closure
    if "\\" in path:
        out.append(path.replace("\\", "/"))
    if ";" in path:
        out.append("/".join(s.split(";", 1)[0] for s in path.split("/")))  # Tomcat, Jetty
        out.append(path.split(";", 1)[0])
    if "//" in path:
        out.append(_EMPTY_SEGMENTS.sub("/", path))
    if _CONTROL.search(path):
        # WHATWG URL parsing drops TAB and newlines and trims C0 and space.
        out.append(re.sub(r"[\t\n\r]", "", path).strip("\x00- "))
    if not path.startswith("/"):
        out.append("/" + path)
    return out


def _closure(raw: str) -> tuple[set[str], bool]:
    """Every spelling reachable from ``raw`` by any combination of rewrites,
    and whether the enumeration stopped at :data:`MAX_SPELLINGS`."""
    found = {raw}
    pending = [raw]
    while pending:
        for spelling in _rewrites(pending.pop()):
            if spelling not in found:
                if len(found) >= MAX_SPELLINGS:
                    return found, True
                found.add(spelling)
                pending.append(spelling)
    return found, False


def path_spellings(raw: str) -> frozenset[str]:
    """Every spelling of a raw request path an app may route it as, case
    folded (Express matches case-insensitively by default): the raw path
    itself and it percent-decoded (once or more), with dot segments resolved,
    ``;`` parameters cut, ``\\`` read as ``/``, repeated ``/`` collapsed,
    and every combination of these. The gateway guards a request when any of
    them lies under an enforced resource. Raises :class:`TooManySpellings`
    past :data:`MAX_SPELLINGS`."""
    if _plain(raw):
        return frozenset((raw.lower(),))
    if len(raw) > MAX_ODD_PATH:
        raise TooManySpellings(raw[:200])
    spellings, exhausted = _closure(raw)
    if exhausted:
        raise TooManySpellings(raw[:200])
    return frozenset(s.lower() for s in spellings)


def is_ambiguous(raw: str) -> bool:
    """Whether routers could disagree on what ``raw`` names: it holds a dot
    segment in any spelling (``..``, ``..;``, ``%2e%2e``, ``/..`` after an
    empty segment), an encoded ``/``, ``\\`` or ``.``, a backslash, a control
    character once decoded, or does not start with ``/``. Near a guarded
    path such a request is refused, not guessed at."""
    if _plain(raw):
        return False
    if not raw.startswith("/") or "\\" in raw or len(raw) > MAX_ODD_PATH:
        return True
    spellings, exhausted = _closure(raw)
    if exhausted:
        return True
    return any(
        _DOT_SEGMENT.search(s) or _ENCODED_SEPARATOR.search(s) or "\\" in s or _CONTROL.search(s)
        for s in spellings
    )


def resource_path(path: str) -> str:
    """A configured resource path in the form spellings are compared with:
    lowercased, without a trailing slash (``/`` for the root)."""
    return path.lower().rstrip("/") or "/"
