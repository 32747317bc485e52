"""Where the base model's weights are and what they are, without loading them (no
torch): `qaforge sources-changed` compares them by content with a version's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qaforge.config import ModelConfig
from qaforge.fsutil import file_sha256, folder_sha256


def gguf_dir(name_or_path: str) -> str:
    """Where a GGUF file lives: a local folder, an installed package, or an HF repo id."""
    if Path(name_or_path).is_dir():
        return name_or_path
    spec = importlib.util.find_spec(name_or_path) if name_or_path.isidentifier() else None
    if spec and spec.submodule_search_locations:
        return spec.submodule_search_locations[0]
    return name_or_path


def base_identity(cfg: ModelConfig) -> str:
    """The base weights by their content wherever they are on this machine (a GGUF
    file, a local folder), else by their hub name: the same on any machine that has the
    same weights, and different for new weights under the same name."""
    if cfg.gguf_file:
        gguf = Path(gguf_dir(cfg.name_or_path)) / cfg.gguf_file
        return f"gguf sha256:{file_sha256(gguf)}" if gguf.is_file() else f"hub:{cfg.name_or_path}/{cfg.gguf_file}"
    if Path(cfg.name_or_path).is_dir():
        return f"folder sha256:{folder_sha256(cfg.name_or_path)}"
    return f"hub:{cfg.name_or_path}"
