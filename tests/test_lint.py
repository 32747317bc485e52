"""The linters CI relies on, over the code, the workflows and the images: what they
report fails the suite, with their own words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import BIN, REPO

WORKFLOWS = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.yml"))
DOCKERFILES = sorted(str(p) for p in (REPO / "docker").glob("Dockerfile*"))


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        # qaforge/ and serving/, as pyproject's [tool.mypy] says.
        ["mypy"],
        # Checks expressions, job needs and action inputs, and flags actions on a runtime GitHub removed.
        ["actionlint", *WORKFLOWS],
        ["hadolint", "--failure-threshold", "info", *DOCKERFILES],
    ],
    ids=["ruff", "mypy", "actionlint", "hadolint"],
)
def test_linter_finds_nothing(command: list[str]) -> None:
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_workflows_and_both_images_are_linted() -> None:
    assert [Path(p).name for p in WORKFLOWS] == ["ci.yml", "retrain.yml"]
    assert [Path(p).name for p in DOCKERFILES] == ["Dockerfile.serve", "Dockerfile.train"]


def test_hadolint_fails_on_what_it_flags(tmp_path: Path) -> None:
    """The threshold above really fails: the shell form of CMD and an unpinned apt package."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y make\nCMD make\n")
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "DL3008" in result.stdout and "DL3025" in result.stdout
