from pathlib import Path

import httpx
import pytest

from qaforge.config import SourcesConfig
from steps.ingest import convert_file, ingest, serve_directory, sources_fingerprint

from conftest import SAMPLE

SITE_PAGES = {p.name for p in (SAMPLE / "site").glob("*.html")}


def test_served_folder_is_reachable_over_http() -> None:
    with serve_directory(SAMPLE / "site") as base:
        assert base.startswith("http://127.0.0.1:")
        response = httpx.get(base + "index.html")
    assert response.status_code == 200
    assert "<nav>" in response.text


def test_sample_corpus_is_crawled_and_converted(sample_corpus) -> None:  # noqa: ANN001
    by_source = {d.source: d for d in sample_corpus.documents}
    crawled = {Path(s).name for s in by_source if s.startswith("data/") or "/site/" in s}
    assert SITE_PAGES <= crawled, "every linked page is reached from index.html"
    assert not sample_corpus.failures
    converters = {d.converter for d in sample_corpus.documents}
    assert {"crawl4ai+docling-html", "docling-pdf", "docling-docx", "docling-md"} <= converters
    levels = next(d for d in sample_corpus.documents if d.source.endswith("levels.html"))
    assert levels.title.startswith("EV Charging Levels")
    assert "19.2 kW" in levels.markdown
    assert len(levels.content_hash) == 64 and levels.fetched_at.tzinfo is not None
    for doc in sample_corpus.documents:
        assert "qaforge sample corpus" not in doc.markdown, f"footer left in {doc.source}"


def test_pdf_and_docx_text(tmp_path: Path) -> None:
    pdf = convert_file(SAMPLE / "docs" / "charger-installation-guide.pdf")
    assert "AWG" in pdf.markdown and pdf.converter == "docling-pdf"
    docx = convert_file(SAMPLE / "docs" / "fleet-depot-charging.docx")
    assert docx.title == "Fleet Depot Charging Planning"
    assert "## " in docx.markdown, "DOCX headings survive conversion"


def test_bad_files_are_recorded_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a pdf")
    (tmp_path / "notes.md").write_text("# Notes\n\nA CCS2 inlet accepts AC and DC charging.\n")
    (tmp_path / "copy.md").write_text("# Notes\n\nA CCS2 inlet accepts AC and DC charging.\n")
    corpus = ingest(SourcesConfig(files=[tmp_path]))
    assert [d.source for d in corpus.documents] == [str(tmp_path / "copy.md")]
    reasons = {Path(f.source).name: f.reason for f in corpus.failures}
    assert "broken.pdf" in reasons
    assert reasons["notes.md"] == f"duplicate of {tmp_path / 'copy.md'}"


def test_nothing_ingested_fails_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(RuntimeError, match=r"nothing could be ingested:\n  .*broken\.pdf"):
        ingest(SourcesConfig(files=[tmp_path]))


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sources.files: no such file or folder"):
        ingest(SourcesConfig(files=[tmp_path / "nope"]))


def test_fingerprint_changes_with_local_files(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# A\n\nfirst")
    sources = SourcesConfig(files=[tmp_path])
    before = sources_fingerprint(sources)
    assert sources_fingerprint(sources) == before
    page.write_text("# A\n\nsecond version")
    assert sources_fingerprint(sources) != before
