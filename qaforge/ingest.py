"""Ingest: crawl web sources (crawl4ai) and convert pages and files (docling) into
cleaned, deduplicated Documents with provenance, reusing the previous run's
conversion of every unchanged input. Nothing that fails stops the run: each
failure is recorded, worded, in the ingest report."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from qaforge.config import SourcesConfig
from qaforge.fsutil import file_sha256
from qaforge.records import (
    Corpus,
    Document,
    IngestFailure,
    IngestReport,
    SourceChanges,
    content_hash,
)
from qaforge.sources.cleaning import (
    detect_language,
    normalize_text,
    remove_blocks,
    repeated_blocks,
    strip_chrome,
)
from qaforge.sources.files import (
    CONTENT_TYPE_SUFFIXES,
    NATIVE_PDF_NOTE,
    ConversionError,
    convert_html,
    convert_path,
    iter_files,
    standard_pdf_available,
)
from qaforge.sources.state import IngestState
from qaforge.sources.web import FetchedPage, crawl_site

if TYPE_CHECKING:
    from docling_core.types.doc import DoclingDocument

log = logging.getLogger(__name__)


def _title(doc: DoclingDocument, fallback: str) -> str:
    return next(
        (t.text for t in doc.texts if t.label in ("title", "section_header") and t.text.strip()),
        fallback,
    )


def local_root(sources: SourcesConfig) -> Path | None:
    """The deepest folder holding every local source (files and served folders)."""
    folders = [Path(p).resolve() for p in sources.files]
    folders = [p if p.is_dir() else p.parent for p in folders]
    folders += [Path(w.serve_dir).resolve() for w in sources.web if w.serve_dir is not None]
    return Path(os.path.commonpath(folders)) if folders else None


def document_id(source: str, root: Path | None) -> str:
    """A URL's hash, or the hash of a local path relative to `root`: a checkout of
    the project anywhere else gives the same ids, so the same document split."""
    if root is not None and not source.startswith(("http://", "https://")):
        source = Path(source).resolve().relative_to(root).as_posix()
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class _Collector:
    """Builds Documents, reusing the previous run's for unchanged inputs."""

    def __init__(self, sources: SourcesConfig, state: IngestState, convert: bool = True) -> None:
        self.sources = sources
        self.state = state
        self.convert = convert
        self.root = local_root(sources)
        self.pdf_mode = "standard" if standard_pdf_available(sources.pdf_artifacts_path) else "native"
        self.documents: dict[str, tuple[str, Document]] = {}
        self.failures: list[IngestFailure] = []
        # document id -> conversion input key of every input fetched (converted, when converting)
        self.inputs: dict[str, str] = {}

    def fingerprint(self) -> str:
        """The inputs as fetched, by document id, so a checkout elsewhere gets the same."""
        lines = "\n".join(f"{doc_id}\t{key}" for doc_id, key in sorted(self.inputs.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def add(
        self,
        source: str,
        input_hash: str,
        convert: Callable[[], DoclingDocument],
        converter_name: str,
        title: str = "",
        status: int | None = None,
    ) -> None:
        key = hashlib.sha256(f"{input_hash}|{self.pdf_mode}".encode()).hexdigest()
        doc_id = document_id(source, self.root)
        self.inputs[doc_id] = key
        if not self.convert:
            return
        if (doc := self.state.reusable(source, key)) is not None:
            doc = doc.model_copy(update={"doc_id": doc_id})
        else:
            try:
                converted = convert()
            except Exception as exc:  # docling's own errors, or any other: one bad input never stops the run
                log.debug("converting %s failed", source, exc_info=True)
                kind, reason = (exc.kind, str(exc)) if isinstance(exc, ConversionError) else (
                    "conversion", f"{type(exc).__name__}: {exc}")
                self.failures.append(IngestFailure(source=source, kind=kind, reason=reason, status=status))
                if kind == "conversion":
                    # Nothing was built from this input, and another try may convert it: the
                    # fingerprint records the input the kept earlier document came from (or
                    # none), or the next check would call the new one unchanged and it would never
                    # be trained on. (What the input itself rules out, too large or of a type
                    # docling does not read, fails the same way again and counts as it is.)
                    if (previous := self.state.index.get(source)) is not None:
                        self.inputs[doc_id] = previous["key"]
                    else:
                        del self.inputs[doc_id]
                return
            markdown = normalize_text(converted.export_to_markdown()).strip()
            doc = Document(
                doc_id=doc_id,
                source=source,
                title=title or _title(converted, Path(source).stem),
                markdown=markdown,
                content_hash=content_hash(markdown),
                fetched_at=datetime.now(UTC),
                converter=converter_name,
                status=status,
                docling_json=converted.model_dump_json(),
            )
        if (rejected := self._rejection(doc)) is not None:
            self.failures.append(rejected)
        else:
            self.documents[source] = (key, doc)

    def _rejection(self, doc: Document) -> IngestFailure | None:
        text = doc.markdown
        if not text:
            return IngestFailure(source=doc.source, kind="empty", reason="no text after conversion")
        if len(text) < self.sources.min_chars:
            return IngestFailure(
                source=doc.source, kind="too_short",
                reason=f"{len(text)} characters, under sources.min_chars={self.sources.min_chars}",
            )
        if self.sources.language and (found := detect_language(text)) != self.sources.language:
            return IngestFailure(
                source=doc.source, kind="language",
                reason=f"language {found}, not sources.language={self.sources.language}",
            )
        return None


def _add_download(collector: _Collector, page: FetchedPage, file: Path, max_bytes: int) -> None:
    """A crawled non-HTML body (saved as `file`): docling converts the formats it knows."""
    suffix = file.suffix.lower() or CONTENT_TYPE_SUFFIXES.get(page.content_type, "")
    if suffix not in CONTENT_TYPE_SUFFIXES.values():
        collector.failures.append(
            IngestFailure(
                source=page.source, kind="content_type", status=page.status,
                reason=f"content type {page.content_type or 'unknown'} is not a document docling reads",
            )
        )
        return
    path = file if file.suffix else file.rename(file.with_suffix(suffix))
    collector.add(
        page.source, file_sha256(path),
        partial(convert_path, path, max_bytes, collector.sources.pdf_artifacts_path),
        f"crawl4ai+docling-{suffix.lstrip('.')}", status=page.status,
    )


def _add_site(collector: _Collector, pages: list[FetchedPage], max_bytes: int) -> None:
    cleaned = {p.source: strip_chrome(p.html) for p in pages if p.html is not None}
    repeated = repeated_blocks(list(cleaned.values()), collector.sources.boilerplate_share)
    for page in tqdm(pages, desc="convert pages", unit="page"):
        if page.file is not None:
            _add_download(collector, page, page.file, max_bytes)
            continue
        html = normalize_text(remove_blocks(cleaned[page.source], repeated))
        collector.add(
            page.source, content_hash(html),
            partial(convert_html, html, Path(page.source).name or "page.html", collector.sources.pdf_artifacts_path),
            "crawl4ai+docling-html", title=page.title, status=page.status,
        )


def _collect(collector: _Collector) -> None:
    """Fetch every source and hand each input to the collector."""
    sources = collector.sources
    max_bytes = int(sources.max_file_mb * 2**20)
    downloads = Path(tempfile.mkdtemp(prefix="qaforge-downloads-"))
    try:
        for web in sources.web:
            outcome = crawl_site(web, downloads)
            collector.failures.extend(outcome.failures)
            _add_site(collector, outcome.pages, max_bytes)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    for qa in sources.qa:  # read by the synthesis step; their contents count as the sources' too
        for path, name in ((qa.path, f"qa/{qa.path.name}"), (qa.feedback, f"qa/{qa.path.name}/feedback")):
            if path is None:
                continue
            try:
                collector.inputs[name] = file_sha256(path)
            except OSError as exc:
                raise OSError(f"sources.qa: cannot read {path}: {exc.strerror or exc}") from exc
    for path in tqdm(list(iter_files(sources.files)), desc="convert files", unit="file"):
        try:
            digest = file_sha256(path)
        except OSError as exc:
            collector.failures.append(IngestFailure(source=str(path), kind="unreadable",
                                                    reason=f"cannot read the file: {exc.strerror or exc}"))
            continue
        collector.add(
            str(path), digest,
            partial(convert_path, path, max_bytes, sources.pdf_artifacts_path),
            f"docling-{path.suffix.lstrip('.').lower()}",
        )


def fingerprint(sources: SourcesConfig) -> str:
    """What `ingest` would record as the sources' fingerprint, from fetching and hashing
    alone: nothing is converted, so it is cheap next to a run. A source that cannot be
    fetched counts as gone."""
    collector = _Collector(sources, IngestState.for_sources(sources), convert=False)
    _collect(collector)
    return collector.fingerprint()


def ingest(sources: SourcesConfig) -> tuple[Corpus, IngestReport]:
    state = IngestState.for_sources(sources)
    collector = _Collector(sources, state)
    _collect(collector)

    # A source that failed this time keeps its earlier document: nothing done is lost.
    for failure in collector.failures:
        if failure.source not in collector.documents and (old := state.previous(failure.source)):
            old = old.model_copy(update={"doc_id": document_id(failure.source, collector.root)})
            collector.documents[failure.source] = (state.index[failure.source]["key"], old)
    from qaforge.sources.dedup import deduplicate  # datasketch: not needed to fingerprint

    documents = [doc for _, doc in collector.documents.values()]
    kept, duplicates = deduplicate(documents, sources.near_duplicate_threshold)

    changes = SourceChanges()
    for source, (_, doc) in collector.documents.items():
        before = state.index.get(source)
        bucket = changes.added if before is None else (
            changes.unchanged if before["content_hash"] == doc.content_hash else changes.changed
        )
        bucket.append(source)
    changes.removed = sorted(set(state.index) - set(collector.documents))
    report = IngestReport(
        checked_at=datetime.now(UTC),
        documents=len(kept),
        failures=collector.failures,
        duplicates=duplicates,
        changes=changes,
        fingerprint=collector.fingerprint(),
        notes=[NATIVE_PDF_NOTE] if collector.pdf_mode == "native" else [],
    )
    for failure in report.failures:
        log.warning("ingest: %s: %s: %s", failure.source, failure.kind, failure.reason)
    if not kept:
        raise RuntimeError(
            "nothing could be ingested:\n"
            + "\n".join(f"  {f.source}: {f.kind}: {f.reason}" for f in report.failures)
        )
    state.save(collector.documents)
    log.info(
        "ingested %d documents; %s; failures %s; %d duplicates",
        len(kept), changes.counts(), report.failure_counts(), len(duplicates),
    )
    return Corpus(documents=kept), report
