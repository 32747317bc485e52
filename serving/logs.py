"""Structured JSON logs for the API: one line per request with its id, and nothing
from prompts or answers unless the operator turns that on.

`LOG_CONFIG` is a logging dictConfig file for uvicorn (`--log-config`); `qaforge
serve` passes it too. uvicorn's access log is off: the request log replaces it.
"""

from __future__ import annotations

import logging
from pathlib import Path

REQUEST_LOG = logging.getLogger("qaforge.requests")
LOG_CONFIG = Path(__file__).with_name("log_config.json")
