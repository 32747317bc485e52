"""Per-key rate limits: requests per minute and tokens per minute, as token buckets
that refill continuously, so a client over its limit is told exactly when to retry."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    per_minute: float
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.per_minute

    def _refill(self, now: float) -> None:
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        self._refill(now)
        if amount <= self.level:
            return 0.0
        if amount > self.per_minute:  # never fits: ask again after a full minute
            return 60.0
        return (amount - self.level) * 60 / self.per_minute

    def take(self, amount: float) -> None:
        self.level -= amount


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimiter:
    """Called from the event loop only, so no locking."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, key: str, kind: str, per_minute: int) -> Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None or bucket.per_minute != per_minute:  # new key, or its limit changed
            bucket = self._buckets[(key, kind)] = Bucket(per_minute)
        return bucket

    def acquire(self, key: str, requests_per_minute: int, tokens_per_minute: int, tokens: int) -> None:
        """Charge one request and `tokens` (the most it can use) or raise RateLimited."""
        now = time.monotonic()
        requests = self._bucket(key, "requests", requests_per_minute)
        budget = self._bucket(key, "tokens", tokens_per_minute)
        if wait := requests.wait_for(1, now):
            raise RateLimited(f"rate limit of {requests_per_minute} requests per minute reached", wait)
        if wait := budget.wait_for(tokens, now):
            raise RateLimited(
                f"rate limit of {tokens_per_minute} tokens per minute reached (this request may use {tokens})", wait
            )
        requests.take(1)
        budget.take(tokens)

    def refund(self, key: str, tokens: int) -> None:
        """Give back what a request reserved but did not use."""
        if (bucket := self._buckets.get((key, "tokens"))) is not None:
            bucket.level = min(bucket.per_minute, bucket.level + tokens)
