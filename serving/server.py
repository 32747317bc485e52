"""uvicorn, configured against slow and oversized requests: h11 with a cap on the size
of the request line and headers, and a deadline for them to arrive (slowloris). The
body's own size and time limits are in serving/middleware.py.

`python -m serving.server` serves with every setting from QAFORGE_* environment
variables (what the serving image runs); `qaforge serve` takes them from a run config.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.logs import LOG_CONFIG
from serving.settings import ServeSettings


class _HeadDeadline(H11Protocol):
    """Closes a connection whose next request head has not fully arrived within
    `head_timeout` seconds of the connection opening or of the previous response."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        waiting_after = self.cycle  # a new request head replaces the cycle

        def expire() -> None:
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(self.head_timeout, expire)


def uvicorn_config(app: FastAPI, settings: ServeSettings, host: str | None = None, port: int | None = None,
                   **options: Any) -> uvicorn.Config:
    protocol = type("HeadDeadlineH11Protocol", (_HeadDeadline,), {"head_timeout": settings.header_timeout_seconds})
    return uvicorn.Config(
        app, host=host or settings.host, port=port or settings.port, http=protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes, **{"log_config": str(LOG_CONFIG)} | options,
    )


def serve(app: FastAPI, settings: ServeSettings, host: str | None = None, port: int | None = None) -> None:
    uvicorn.Server(uvicorn_config(app, settings, host, port)).run()


if __name__ == "__main__":
    from serving.app import create_app

    env_settings = ServeSettings()
    serve(create_app(env_settings), env_settings)
