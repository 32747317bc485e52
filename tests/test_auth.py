from pathlib import Path

import pytest
from fastapi import FastAPI, Depends
from fastapi.testclient import TestClient

from serving.auth import BearerAuth, load_tokens


def test_tokens_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_TOKENS", "alpha, beta")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# team keys\ngamma\n\n")
    assert load_tokens("QA_TOKENS", tokens_file) == ["alpha", "beta", "gamma"]


def test_no_tokens_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QA_TOKENS", raising=False)
    with pytest.raises(ValueError, match=r"no API tokens configured: set \$QA_TOKENS"):
        load_tokens("QA_TOKENS", None)


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong", 401), ("Basic alpha", 401), ("Bearer alpha", 200), ("bearer beta", 200)],
)
def test_bearer_auth(header: str | None, status: int) -> None:
    app = FastAPI()

    @app.get("/", dependencies=[Depends(BearerAuth(["alpha", "beta"]))])
    def root() -> dict:
        return {}

    response = TestClient(app).get("/", headers={"Authorization": header} if header else {})
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
