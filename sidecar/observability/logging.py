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

import structlog

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
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
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


def json_line(event: str, fields: dict[str, Any]) -> str:
    """One line as structlog's JSON renderer writes it for an info event:
    the fields, the bound context (request id, worker), level, timestamp."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    line = {
        **fields,
        "event": event,
        **structlog.contextvars.get_contextvars(),
        "level": "info",
        "timestamp": f"{stamp}.{int(now % 1 * 1_000_000):06d}Z",
    }
    return json.dumps(line) + "\n"


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
