"""The scheduled retrain's decision, as .github/workflows/retrain.yml makes it: its own
step script run by bash as GitHub runs it (`bash -e`), against `qaforge sources-changed`.
A check that crashes or cannot reach the tracking server fails the run; it never reads
as "unchanged" and skips the retrain."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from qaforge.cli import SourcesCheck

from helpers import BIN, REPO


def sources_step() -> str:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    [step] = [s for s in workflow["jobs"]["retrain"]["steps"] if s.get("id") == "sources"]
    return step["run"]


def decide(project: Path, qaforge: Path) -> tuple[int, str, str]:
    """Run the step in `project` with `qaforge` as its `.venv/bin/qaforge`: exit code,
    output, and what it wrote to GITHUB_OUTPUT."""
    venv = project / ".venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "qaforge").unlink(missing_ok=True)
    (venv / "qaforge").symlink_to(qaforge)
    outputs = project / "github-output"
    outputs.write_text("")
    result = subprocess.run(["bash", "-e", "-c", sources_step()], cwd=project, capture_output=True, text=True,
                            env=os.environ | {"CONFIG": "run.yaml", "FORCE": "false", "GITHUB_OUTPUT": str(outputs)})
    return result.returncode, result.stdout + result.stderr, outputs.read_text()


def test_a_check_that_crashes_fails_the_run(tmp_path: Path) -> None:
    """A config whose site folder is missing: the check names it and the run fails,
    where Python's own exit code for a crash (1) used to mean "unchanged"."""
    run_config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    run_config["parameters"]["config"]["sources"] = {"web": [{"start": "index.html", "serve_dir": "no-such-site"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config))
    code, output, decided = decide(tmp_path, BIN / "qaforge")
    assert code != 0 and decided == "", output
    assert "Cannot tell whether the sources changed: FileNotFoundError" in output and "no-such-site" in output
    assert "::error::qaforge sources-changed could not tell whether the sources changed (exit 12)" in output


@pytest.mark.parametrize(("status", "decided"), [
    (SourcesCheck.CHANGED, "changed=true\n"),
    (SourcesCheck.UNCHANGED, "changed=false\n"),
    (1, None),  # an uncaught Python exception
    (2, None),  # a bad command line or config
    (SourcesCheck.ERROR, None),
])
def test_only_the_two_answers_decide(tmp_path: Path, status: int, decided: str | None) -> None:
    fake = tmp_path / "fake-qaforge"
    fake.write_text(f"#!/bin/sh\nexit {int(status)}\n")
    fake.chmod(0o755)
    code, output, written = decide(tmp_path, fake)
    if decided is None:
        assert code != 0 and written == "" and f"(exit {int(status)})" in output, output
    else:
        assert code == 0 and written == decided, output
