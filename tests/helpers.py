"""What several test modules share besides fixtures: the repository's paths, the CLIs
as a user runs them, a user's project made of a shipped config, and the API served on
a free port. Fixtures stay in conftest.py; test modules import these from here."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fixture_site import free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
BIN = Path(sys.executable).parent  # the CLIs installed beside this interpreter


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    """Run one of the installed CLIs as a user would; its output, after checking its exit code."""
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=1200,
                            env=env if env is not None else os.environ | {"COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode in ok, f"{' '.join(args)} exited {result.returncode}:\n{output[-6000:]}"
    return output


def user_project(root: Path, config: str) -> dict[str, Any]:
    """`configs/<config>` as a user's project at `root` holds it: the run config, with
    its repository-relative sources, QA files and gold sets made absolute, the repo's model cache
    and training output under `root`. Written to `root/run.yaml` by `write_run_config`."""
    run_config = yaml.safe_load((REPO / "configs" / config).read_text())
    cfg = run_config["parameters"]["config"]
    for web in cfg["sources"].get("web", []):
        web["serve_dir"] = str(REPO / web["serve_dir"])
    cfg["sources"]["files"] = [str(REPO / f) for f in cfg["sources"].get("files", [])]
    for qa in cfg["sources"].get("qa", []):
        qa["path"] = str(REPO / qa["path"])
    for gold in cfg.get("evaluation", {}).get("gold", []):
        gold["path"] = str(REPO / gold["path"])
    cfg["model"] = cfg.get("model", {}) | {"cache_dir": str(REPO / ".qaforge" / "models")}
    cfg["training"]["output_dir"] = str(root / "train")
    return run_config


def write_run_config(root: Path, run_config: dict[str, Any], name: str = "run.yaml") -> None:
    (root / name).write_text(yaml.safe_dump(run_config))


@contextmanager
def running(app: Any, settings: Any) -> Iterator[str]:
    """The API app served by uvicorn on a free port, configured as `qaforge serve` does."""
    import uvicorn

    from serving.server import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", free_port(), log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
