"""Bearer-token auth: tokens come from an environment variable (comma separated)
and/or a file (one per line); comparison is constant-time."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import HTTPException, Request, status


def load_tokens(env_var: str, tokens_file: Path | None) -> list[str]:
    tokens = [t.strip() for t in os.environ.get(env_var, "").split(",")]
    if tokens_file is not None:
        tokens += [line.strip() for line in tokens_file.read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        where = f"${env_var}" + (f" or {tokens_file}" if tokens_file else "")
        raise ValueError(f"no API tokens configured: set {where}")
    return tokens


class BearerAuth:
    """FastAPI dependency that accepts any of the configured tokens."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def __call__(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Check every token so the time taken does not depend on which one matched.
        matches = [hmac.compare_digest(token.encode(), t) for t in self._tokens]
        if scheme.lower() != "bearer" or not any(matches):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
