"""API keys (hashed, named, revocable) and the per-key rate limiter, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from qaforge.generation import cut_at_stop
from serving.keys import AuthError, KeyStore, create_key, hash_key, read_keys, revoke_key
from serving.limits import Bucket, RateLimited, RateLimiter


def test_keys_file_stores_only_hashes_and_revokes(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = create_key(path, "app", requests_per_minute=5)
    assert key.startswith("qf-") and key not in path.read_text()
    [entry] = read_keys(path)
    assert (entry.name, entry.sha256, entry.requests_per_minute) == ("app", hash_key(key), 5)
    with pytest.raises(ValueError, match="a key named 'app' already exists"):
        create_key(path, "app")
    store = KeyStore(path, "QAFORGE_TEST_UNSET")
    assert store.authenticate(f"Bearer {key}").name == "app"
    revoke_key(path, "app")
    store.reload()
    with pytest.raises(AuthError) as err:
        store.authenticate(f"Bearer {key}")
    assert (err.value.status, err.value.message) == (403, "API key 'app' has been revoked")
    with pytest.raises(ValueError, match="no key named 'nobody'"):
        revoke_key(path, "nobody")


def test_env_keys_missing_and_wrong_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAFORGE_TEST_KEYS", "ci:alpha, beta")
    store = KeyStore(None, "QAFORGE_TEST_KEYS")
    assert store.authenticate("Bearer alpha").name == "ci"
    assert store.authenticate("bearer beta").name.startswith("env-")
    for header, message in [(None, "missing bearer"), ("Basic alpha", "missing bearer"), ("Bearer gamma", "invalid")]:
        with pytest.raises(AuthError, match=message) as err:
            store.authenticate(header)
        assert err.value.status == 401


def test_a_broken_keys_file_keeps_the_loaded_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = create_key(path, "app")
    store = KeyStore(path, "QAFORGE_TEST_UNSET")
    path.write_text("keys:\n  - name: app\n    sha256: not-a-hash\n")
    store.reload()
    assert store.authenticate(f"Bearer {key}").name == "app"
    with pytest.raises(ValueError, match=r"keys.0.sha256: String should match pattern"):
        read_keys(path)


def test_no_keys_at_all_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no API keys configured: set \$QAFORGE_TEST_UNSET"):
        KeyStore(None, "QAFORGE_TEST_UNSET")


def test_bucket_refills_continuously() -> None:
    bucket = Bucket(per_minute=60)  # one a second
    bucket.updated = 0.0
    assert bucket.wait_for(60, now=0.0) == 0
    bucket.take(60)
    assert bucket.wait_for(1, now=0.5) == pytest.approx(0.5)
    assert bucket.wait_for(1, now=1.0) == 0
    assert bucket.wait_for(120, now=1.0) == 60.0, "more than a minute's worth never fits"


def test_rate_limiter_counts_requests_and_tokens_per_key() -> None:
    limiter = RateLimiter()
    limiter.acquire("a", requests_per_minute=2, tokens_per_minute=1000, tokens=100)
    limiter.acquire("a", requests_per_minute=2, tokens_per_minute=1000, tokens=100)
    with pytest.raises(RateLimited, match="2 requests per minute") as err:
        limiter.acquire("a", requests_per_minute=2, tokens_per_minute=1000, tokens=100)
    assert 1 <= err.value.retry_after <= 30
    limiter.acquire("b", requests_per_minute=10, tokens_per_minute=300, tokens=250)
    with pytest.raises(RateLimited, match="300 tokens per minute"):
        limiter.acquire("b", requests_per_minute=10, tokens_per_minute=300, tokens=100)
    limiter.refund("b", 200)  # the first request used only 50 of its 250
    limiter.acquire("b", requests_per_minute=10, tokens_per_minute=300, tokens=100)


def test_stop_sequences_are_cut_like_openai() -> None:
    assert cut_at_stop("Level 2. Then DC.", (".",)) == ("Level 2", True)
    assert cut_at_stop("Level 2 uses 240 V", ("\n\n", "###")) == ("Level 2 uses 240 V", False)
    assert cut_at_stop("a###b\n\nc", ("\n\n", "###")) == ("a", True)
