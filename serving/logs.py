"""Structured JSON logs for the API: one line per request with its id, and nothing
from prompts or answers unless the operator turns that on."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

REQUEST_LOG = logging.getLogger("qaforge.requests")


def configure_json_logging(level: int = logging.INFO) -> None:
    """JSON on stderr for qaforge's loggers and uvicorn's (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
    )
    for name in ("qaforge", "serving", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # uvicorn's access log would repeat the request line without the id; ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
