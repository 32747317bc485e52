"""What a run costs: the default pipeline cold (each step's time, and evaluation's share),
again with nothing changed, and again after one page of the site was edited, each after
`qaforge sources-changed` (the check a scheduled retrain makes first), in a fresh
project and ZenML store. `--fresh-runner` runs the edited page as a scheduled run on a
new CI runner does instead: a new ZenML store (no step cache, no runs) with the
project's caches restored as retrain.yml restores them (all but the checkpoints). The dequantized base model is shared with the repository's
cache (a one-time set-up, not a run). `--avx2` runs everything as on a CPU without
AVX512 and native bf16 (the emulation flags of shared/DESIGN.md).

    python bench/pipeline.py [--config configs/default.yaml] [--page index.html] [--cold-only | --fresh-runner]
                             [--avx2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from qaforge.cli import SourcesCheck

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# What `qaforge sources-changed` says fetching took: the rest of its time is start-up.
FETCHED = re.compile(r"Fetched and hashed the sources in ([\d.]+) s")
STEP_TIME = re.compile(r"Step\W+(\w+)\W+has finished in\W+(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?")


def step_seconds(output: str) -> dict[str, float]:
    """Each step's duration, as ZenML prints it ("Step `train_step` has finished in 1m37s")."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    return {m[1]: 3600 * float(m[2] or 0) + 60 * float(m[3] or 0) + float(m[4] or 0)
            for m in STEP_TIME.finditer(plain)}


def timed(*args: str, cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, result.returncode, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--page", default="index.html", help="The page of the served site to edit.")
    parser.add_argument("--cold-only", action="store_true", help="Only the cold run.")
    parser.add_argument("--fresh-runner", action="store_true",
                        help="Cold, then the edited page on a new ZenML store with the project's caches restored.")
    parser.add_argument("--avx2", action="store_true", help="Emulate an AVX2-only CPU (no native bf16).")
    parser.add_argument("--log", type=Path, help="Also write each run's whole output here.")
    args = parser.parse_args()

    project = Path(tempfile.mkdtemp(prefix="qaforge-bench-pipeline-"))
    shutil.copytree(REPO / "data", project / "data")
    run_config = yaml.safe_load(args.config.read_text())
    run_config["parameters"]["config"]["model"]["cache_dir"] = str(REPO / ".qaforge" / "models")
    (project / "run.yaml").write_text(yaml.safe_dump(run_config))
    site = Path(run_config["parameters"]["config"]["sources"]["web"][0]["serve_dir"])
    env = os.environ | {"ZENML_CONFIG_PATH": str(project / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"} | (
        AVX2 if args.avx2 else {})
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=env, capture_output=True, text=True).stdout.strip()
    print(f"CPU: torch capability {capability}, {os.cpu_count()} cores", flush=True)
    _, code, out = timed("qaforge", "setup", "-c", "run.yaml", cwd=project, env=env)
    assert code == 0, out

    rows = []
    labels = ["cold"] if args.cold_only else ["cold", f"{args.page} edited, fresh runner"] if args.fresh_runner \
        else ["cold", "nothing changed", f"{args.page} edited"]
    for label in labels:
        if label.endswith("fresh runner"):
            env = env | {"ZENML_CONFIG_PATH": str(project / "zenml-new-runner")}
            _, code, out = timed("qaforge", "setup", "-c", "run.yaml", cwd=project, env=env)
            assert code == 0, out
            shutil.rmtree(project / ".qaforge" / "train")
        if "edited" in label:
            page = project / site / args.page
            page.write_text(page.read_text().replace(
                "</body>", "<p>From March, every public charger in the network accepts contactless payment.</p></body>"))
        check_s, check_code, out = timed("qaforge", "sources-changed", "-c", "run.yaml", cwd=project, env=env)
        assert check_code in (SourcesCheck.CHANGED, SourcesCheck.UNCHANGED), out
        fetch_s = float(FETCHED.search(out)[1])
        run_s, code, out = timed("zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline",
                                 "-c", "run.yaml", cwd=project, env=env)
        assert code == 0, out[-4000:]
        cached = len(set(re.findall(r"Using cached version of step `?(\w+)", out)))
        rows.append((label, check_s, fetch_s, SourcesCheck(check_code).name.lower(), run_s, cached))
        print(f"{label}: sources-changed {check_s:.1f} s ({check_s - fetch_s:.1f} s start-up, {fetch_s:.1f} s "
              f"fetching; {rows[-1][3]}), run {run_s:.1f} s, {cached} steps from the cache", flush=True)
        if args.log:
            with args.log.open("a") as log:
                log.write(f"===== {label}\n{out}\n")
        steps = step_seconds(out)
        if steps:
            print("  steps: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps.items()))
        if steps.get("evaluate_step"):
            print(f"  evaluate_step: {steps['evaluate_step']:.1f} s, {steps['evaluate_step'] / run_s:.0%} of the run",
                  flush=True)

    cold = rows[0][4]
    print(f"\n{'run':<22}{'sources-changed':>18}{'start-up':>10}{'says':>11}{'run s':>9}{'cached steps':>14}"
          f"{'of cold':>9}")
    for label, check_s, fetch_s, says, run_s, cached in rows:
        print(f"{label:<22}{check_s:>16.1f} s{check_s - fetch_s:>8.1f} s{says:>11}{run_s:>9.1f}{cached:>14}"
              f"{run_s / cold:>9.1%}")
    shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
