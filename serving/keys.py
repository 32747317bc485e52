"""API keys: named, stored only as SHA-256 hashes, compared in constant time, with
per-key rate limits, revocable without a restart.

The keys file is YAML written by `qaforge keys create/revoke`:

    keys:
      - name: mobile-app
        sha256: 9f86d081...
        requests_per_minute: 30      # optional; the server's defaults otherwise
        tokens_per_minute: 5000
        revoked: false

It is re-read when its modification time changes (checked at most once a second) and
on `reload()` (SIGHUP). Plain keys from an environment variable are for development.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from qaforge.fsutil import write_atomic

log = logging.getLogger(__name__)


class ApiKey(BaseModel):
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    revoked: bool = False


class KeysFile(BaseModel):
    keys: list[ApiKey] = Field(default_factory=list)


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> list[ApiKey]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return KeysFile.model_validate(raw).keys
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read keys file {path}: {exc}") from None
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ValueError(f"{path}: {'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None


def env_keys(env_var: str) -> list[ApiKey]:
    """'name:key' or bare 'key' entries; a bare key is named after its hash."""
    keys = []
    for entry in filter(None, (e.strip() for e in os.environ.get(env_var, "").split(","))):
        name, sep, key = entry.partition(":")
        name, key = (name, key) if sep else (f"env-{hash_key(entry)[:8]}", entry)
        keys.append(ApiKey(name=name, sha256=hash_key(key)))
    return keys


def create_key(path: Path, name: str, requests_per_minute: int | None = None, tokens_per_minute: int | None = None) -> str:
    """Add a new key to the file; return it (the only time it is ever shown)."""
    keys = read_keys(path) if path.exists() else []
    if any(k.name == name for k in keys):
        raise ValueError(f"{path}: a key named '{name}' already exists")
    key = "qf-" + secrets.token_urlsafe(32)
    keys.append(
        ApiKey(name=name, sha256=hash_key(key), requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
    )
    _write(path, keys)
    return key


def revoke_key(path: Path, name: str) -> None:
    keys = read_keys(path)
    if not any(k.name == name for k in keys):
        raise ValueError(f"{path}: no key named '{name}'")
    _write(path, [k.model_copy(update={"revoked": True}) if k.name == name else k for k in keys])


def _write(path: Path, keys: list[ApiKey]) -> None:
    write_atomic(path, yaml.safe_dump(KeysFile(keys=keys).model_dump(exclude_none=True), sort_keys=False))


class KeyStore:
    """The keys currently accepted."""

    def __init__(self, keys_file: Path | None, env_var: str) -> None:
        self.keys_file = keys_file
        self.env_var = env_var
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self._keys: list[ApiKey] = []
        self.reload()
        if not self._keys:
            where = f"${env_var}" + (f" or {keys_file}" if keys_file else "")
            raise ValueError(f"no API keys configured: set {where} (`qaforge keys create NAME`)")

    def reload(self) -> None:
        """Re-read the keys; a broken file keeps the keys already loaded (and says why)."""
        with self._lock:
            keys = env_keys(self.env_var)
            if self.keys_file is not None:
                try:
                    self._mtime = self.keys_file.stat().st_mtime
                    keys += read_keys(self.keys_file)
                except (OSError, ValueError) as exc:
                    log.error("keeping the loaded API keys: %s", exc)
                    return
            self._keys = keys
            log.info("loaded %d API keys (%d revoked)", len(keys), sum(k.revoked for k in keys))

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.keys_file is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            changed = self.keys_file.stat().st_mtime != self._mtime
        except OSError:
            changed = True
        if changed:
            self.reload()

    def authenticate(self, authorization: str | None) -> ApiKey:
        self._maybe_reload()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "missing bearer API key (Authorization: Bearer <key>)")
        digest = hash_key(token.strip())
        # Compare against every key so the time taken does not tell which one matched.
        matches = [k for k in self._keys if hmac.compare_digest(digest, k.sha256)]
        if not matches:
            raise AuthError(401, "invalid API key")
        if matches[0].revoked:
            raise AuthError(403, f"API key '{matches[0].name}' has been revoked")
        return matches[0]
