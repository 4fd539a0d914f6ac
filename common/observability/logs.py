"""structlog setup: JSON lines off a TTY, readable console on one.

Every line carries ``ts`` (UTC ISO), ``level``, ``service``, ``host`` and ``event``; the service loop
binds ``request_id``, ``round`` and ``step`` through contextvars while it handles a request's message.
With a log file, lines go there (rotated) instead of stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

LOG_FILE_MAX_BYTES = 20 * 2**20  # rotate a service's log file at this size
LOG_FILE_BACKUPS = 5  # NAME.log.1 .. NAME.log.5 are kept
_LOGGER_NAME = "flowring"


def configure(level: str = "info", *, service: str = "", log_file: Path | None = None,
              json_lines: bool | None = None) -> None:
    """Configure structlog once per process; JSON unless writing to a terminal."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_FILE_MAX_BYTES,
                                                       backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        json_lines = True if json_lines is None else json_lines
    else:
        handler = logging.StreamHandler(sys.stderr)
        json_lines = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(logging.Formatter("%(message)s"))
    stdlib = logging.getLogger(_LOGGER_NAME)
    stdlib.handlers[:] = [handler]
    stdlib.setLevel(logging.DEBUG)  # structlog filters by level before a line is rendered
    stdlib.propagate = False
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(timestamp_key="ts")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _static_fields(service=service, host=socket.gethostname()),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *args: stdlib,
        cache_logger_on_first_use=True,
    )


def _static_fields(**fields: str) -> Any:
    """A processor adding fixed fields (not contextvars: the link threads log too)."""
    present = {k: v for k, v in fields.items() if v}

    def add(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in present.items():
            event.setdefault(key, value)
        return event

    return add
