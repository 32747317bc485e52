"""File writes that a crash cannot leave half done, and file contents by their hash."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def append_line(path: Path, line: str) -> None:
    """One whole line per call (a single write on an O_APPEND file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, computed once per state of the file (size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256((path.name,), path.parent, (stat.st_size, stat.st_mtime_ns))


def folder_sha256(folder: Path | str) -> str:
    """SHA-256 over every file of a folder, names included (a model: weights, config,
    tokenizer), computed once per state of the folder."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = tuple(str(p.relative_to(folder)) for p in files)
    return _sha256(names, Path(folder), tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in files), named=True)


@cache
def _sha256(names: tuple[str, ...], root: Path, state: tuple, named: bool = False) -> str:
    digest = hashlib.sha256()
    for name in names:
        if named:
            digest.update(name.encode())
        with (root / name).open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()
