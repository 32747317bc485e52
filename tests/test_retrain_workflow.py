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


def retrain_steps() -> list[dict]:
    return yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())["jobs"]["retrain"]["steps"]


def sources_step() -> str:
    [step] = [s for s in retrain_steps() if s.get("id") == "sources"]
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


@pytest.mark.parametrize("config", ["default.yaml", "faq.yaml", "manual.yaml", "teacher.yaml"])
def test_a_scheduled_run_starts_from_the_last_runs_caches(config: str) -> None:
    """Each fresh runner used to start cold: re-crawl, re-convert, re-ask the base model
    (issue 23, finding 8). The workflow restores the project's cache folder before it
    checks the sources, and every cache the config names lies inside it, apart from the
    checkpoints it leaves out."""
    from qaforge.config import load_config

    steps = retrain_steps()
    [cache] = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    assert steps.index(cache) < next(i for i, s in enumerate(steps) if s.get("id") == "sources")
    paths = cache["with"]["path"].split()
    kept = [Path(p) for p in paths if not p.startswith("!")]
    left_out = [Path(p[1:]) for p in paths if p.startswith("!")]
    assert cache["with"]["key"].endswith("${{ github.run_id }}"), "a fixed key is saved once and never updated"
    cfg = load_config(REPO / "configs" / config)
    caches = {"ingest": cfg.sources.state_dir, "models": cfg.model.cache_dir, "chunks": cfg.chunking.cache_dir,
              "synthesis": cfg.synthesis.cache_dir, "answers": cfg.evaluation.cache_dir}
    for name, folder in caches.items():
        assert folder is not None and any(folder.is_relative_to(p) for p in kept), (name, folder, kept)
        assert not any(folder.is_relative_to(p) for p in left_out), (name, folder)
    assert any(cfg.training.output_dir.is_relative_to(p) for p in left_out), cfg.training.output_dir
