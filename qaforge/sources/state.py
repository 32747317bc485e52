"""What the previous ingest of the same sources produced, kept on disk so a rerun
reuses the conversion of every unchanged input and can report what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qaforge.config import SourcesConfig
from qaforge.fsutil import write_atomic
from qaforge.records import Document


class IngestState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index_path = directory / "index.json"
        # source -> {"key": conversion input hash, "content_hash": ..., "doc": file name}
        self.index: dict[str, dict[str, str]] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        )

    @classmethod
    def for_sources(cls, sources: SourcesConfig) -> IngestState:
        """One state per set of sources, so two configs never see each other's files."""
        names = sorted(
            [w.start + str(w.serve_dir or "") for w in sources.web]
            + [str(Path(p).resolve()) for p in sources.files]
        )
        key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        return cls(Path(sources.state_dir) / key)

    def _load(self, source: str) -> Document | None:
        """The stored Document; an unreadable or outdated file counts as none."""
        entry = self.index.get(source)
        if entry is None:
            return None
        try:
            return Document.model_validate_json((self.directory / "documents" / entry["doc"]).read_text())
        except (OSError, ValueError):
            return None

    def reusable(self, source: str, key: str) -> Document | None:
        """The earlier Document of `source` if it was made from the same input."""
        entry = self.index.get(source)
        return self._load(source) if entry and entry["key"] == key else None

    def previous(self, source: str) -> Document | None:
        return self._load(source)

    def save(self, documents: dict[str, tuple[str, Document]]) -> None:
        """Replace the state with `documents`: source -> (input key, Document)."""
        folder = self.directory / "documents"
        folder.mkdir(parents=True, exist_ok=True)
        index = {}
        for source, (key, doc) in documents.items():
            name = f"{doc.doc_id}-{key[:16]}.json"
            if not (folder / name).exists():
                write_atomic(folder / name, doc.model_dump_json())
            index[source] = {"key": key, "content_hash": doc.content_hash, "doc": name}
        write_atomic(self.index_path, json.dumps(index, indent=1, sort_keys=True))
        for stale in set(p.name for p in folder.glob("*.json")) - {e["doc"] for e in index.values()}:
            (folder / stale).unlink()
        self.index = index
