"""One checkout used with two ZenML stores: ZenML keeps a single active stack per
checkout and resets it to `default` when the checkout meets another store, so the
qaforge commands find the stack `qaforge setup` made in the store in use (issue 23,
finding 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import run_cli, user_project, write_run_config

pytestmark = pytest.mark.slow


def test_commands_find_the_qaforge_stack_of_the_store_in_use(tmp_path: Path) -> None:
    write_run_config(tmp_path, user_project(tmp_path, "default.yaml"))
    store = {name: os.environ | {"ZENML_CONFIG_PATH": str(tmp_path / name), "COLUMNS": "200"} for name in "AB"}

    def doctor(name: str) -> str:
        return run_cli("qaforge", "doctor", "-c", "run.yaml", cwd=tmp_path, env=store[name])

    run_cli("qaforge", "setup", "-c", "run.yaml", cwd=tmp_path, env=store["A"])
    assert "ZenML stack:               qaforge" in doctor("A")

    # Any ZenML command against store B resets the checkout's active stack ...
    run_cli("zenml", "stack", "list", cwd=tmp_path, env=store["B"])
    in_b = doctor("B")
    assert "ZenML stack:               default" in in_b
    assert f"ZenML store sqlite:///{tmp_path}/B/" in in_b and "run `qaforge setup`" in in_b, in_b

    # ... and back in store A, the stack setup made there is active again, and it says so.
    back = doctor("A")
    assert "ZenML stack:               qaforge" in back and "MLflow tracking URI" in back, back
    assert "activated the ZenML stack 'qaforge'" in back and "had become 'default'" in back, back

    # Set up in both stores, the checkout follows whichever is in use.
    run_cli("qaforge", "setup", "-c", "run.yaml", cwd=tmp_path, env=store["B"])
    assert "ZenML stack:               qaforge" in doctor("A")
    remembered = json.loads((tmp_path / ".zen" / "qaforge-stacks.json").read_text())
    assert sorted(remembered.values()) == ["qaforge", "qaforge"] and len({*remembered}) == 2, remembered
