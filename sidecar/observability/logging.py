"""structlog configured in one place: JSON when not on a terminal.

uvicorn's own loggers are routed through the same renderer so every line the
process prints has one shape.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson
import structlog

from sidecar.observability.context import CURRENT_REQUEST_ID

# Set by configure_logging: whether info lines go out as JSON. The access
# line, written once per request, then skips structlog's processor chain
# (about a fifth of a proxied request's CPU, measured with py-spy) and is
# written as the same JSON directly.
JSON_INFO_LINES = False

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    global JSON_INFO_LINES
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    JSON_INFO_LINES = use_json and _LEVELS[level] <= logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our access line replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True


def add_request_id(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the id of the request being served, if any."""
    request_id = CURRENT_REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


_process_bound: dict[str, Any] = {}


def bind_process_context(**values: Any) -> None:
    """Fields for every line this process writes (a worker's number)."""
    structlog.contextvars.bind_contextvars(**values)
    _process_bound.update(values)


def _dumps(value: Any, **options: Any) -> str:
    """structlog's serializer: orjson, with structlog's fallback for values
    JSON has no form for (it passes ``default``); what orjson refuses (keys
    that are not strings, integers past 64 bits) goes through the standard
    library instead, so a log line never fails."""
    try:
        return orjson.dumps(value, default=options.get("default")).decode()
    except TypeError:
        return json.dumps(value, default=options.get("default") or repr)


_second: tuple[int, str] = (0, "")  # the last whole second, formatted


def _timestamp(now: float) -> str:
    """ISO 8601 in UTC with microseconds, as structlog's TimeStamper writes
    it; the seconds part formatted once per second, not once per line."""
    global _second
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"


def json_line(event: str, fields: dict[str, Any]) -> str:
    """One line as structlog's JSON renderer writes it for an info event:
    the fields, the request id, what the process bound (its worker number),
    level, timestamp."""
    line = {
        **fields,
        "event": event,
        "request_id": CURRENT_REQUEST_ID.get(),
        **_process_bound,
        "level": "info",
        "timestamp": _timestamp(time.time()),
    }
    return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
