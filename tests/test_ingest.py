"""Ingestion against a real HTTP server on 127.0.0.1 and real files."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

import httpx
import pytest
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate

from qaforge.chunking import chunk_corpus
from qaforge.config import SourcesConfig
from qaforge.ingest import fingerprint, ingest
from qaforge.sources.cleaning import normalize_text, remove_blocks, repeated_blocks, strip_chrome
from qaforge.sources.web import serve_directory

from fixture_site import FixtureSite
from helpers import SAMPLE

INSTALL_TEXT = [
    "Mount the wall charger between 0.6 m and 1.2 m above the floor of the garage.",
    "A 48 A charger needs a 60 A breaker and 6 AWG copper conductors in most installations.",
]


def make_pdf(encrypt: str | None = None) -> bytes:
    buffer = io.BytesIO()
    styles = getSampleStyleSheet()
    SimpleDocTemplate(buffer, encrypt=encrypt, invariant=1).build(
        [Paragraph("Installation notes", styles["Heading1"])]
        + [Paragraph(t, styles["Normal"]) for t in INSTALL_TEXT]
    )
    return buffer.getvalue()


@pytest.fixture
def site() -> FixtureSite:
    return FixtureSite(pdf=make_pdf())


def web_sources(base: str, tmp_path: Path, **web: object) -> SourcesConfig:
    return SourcesConfig(
        web=[{"start": f"{base}/", "timeout_seconds": 1, "retries": 2, **web}],
        min_chars=120,
        near_duplicate_threshold=0.8,
        state_dir=tmp_path / "state",
    )


def test_crawl_records_every_failure_and_keeps_the_rest(site: FixtureSite, tmp_path: Path) -> None:
    with site.serve() as base:
        corpus, report = ingest(web_sources(base, tmp_path))
    docs = {d.source.removeprefix(base): d for d in corpus.documents}
    assert set(docs) == {"/", "/a", "/b", "/changing", "/flaky", "/manual.pdf"}
    failures = {f.source.removeprefix(base): f for f in report.failures}
    kinds = {k: f.kind for k, f in failures.items()}
    # docling keeps the tiny page's one sentence (too short) or drops it as page chrome (empty).
    assert kinds.pop("/tiny") in ("too_short", "empty")
    assert kinds == {
        "/missing": "http_error",
        "/error": "http_error",
        "/slow": "timeout",
        "/file.bin": "content_type",
        "/private/secret": "robots",
        "/empty": "empty",
    }
    assert failures["/missing"].status == 404 and failures["/missing"].reason == "HTTP 404"
    assert failures["/error"].reason == "HTTP 500 (after 3 tries)"
    assert site.requests.count("/error") == 3, "5xx is retried"
    assert site.flaky_hits == 2, "429 is retried and then succeeds"
    assert "/private/secret" not in site.requests
    assert not any("example.com" in s for s in [*docs, *failures]), "external links stay out"
    counts = {"http_error": 2, "timeout": 1, "content_type": 1, "robots": 1, "empty": 1}
    counts[failures["/tiny"].kind] = counts.get(failures["/tiny"].kind, 0) + 1
    assert report.failure_counts() == counts
    # near-duplicate of /a, kept first
    assert [(d.source.removeprefix(base), d.duplicate_of.removeprefix(base), d.kind) for d in report.duplicates] == [
        ("/near-dup", "/a", "near")
    ]
    a = docs["/a"]
    assert a.title == "Home charging circuits" and a.status == 200 and a.converter == "crawl4ai+docling-html"
    assert "19.2 kW" in a.markdown
    for chrome in ("cookies", "newsletter", "Fixture site", "Home\n"):
        assert chrome not in a.markdown, chrome
    pdf = docs["/manual.pdf"]
    assert pdf.converter == "crawl4ai+docling-pdf" and "60 A breaker" in pdf.markdown
    # changes count sources, so the near-duplicate page is among them
    assert report.changes.counts() == {"added": 7, "changed": 0, "removed": 0, "unchanged": 0}


@pytest.mark.slow
def test_rerun_reuses_unchanged_and_reports_changes(site: FixtureSite, tmp_path: Path, tokenizer) -> None:
    with site.serve() as base:
        sources = web_sources(base, tmp_path, max_depth=1)
        first, _ = ingest(sources)
        chunks_dir = tmp_path / "chunks"
        chunk_corpus(first, tokenizer, 128, chunks_dir)
        cached_files = {p.name: p.stat().st_mtime_ns for p in chunks_dir.iterdir()}

        second, report = ingest(sources)
        assert second == first, "nothing changed: an identical corpus (so ZenML's cache hits)"
        # The cheap check, which fetches without converting, agrees with the run.
        unchanged = fingerprint(sources)
        assert report.fingerprint == unchanged and len(unchanged) == 64
        assert report.changes.counts()["unchanged"] == len(first.documents) + len(report.duplicates)
        assert not report.changes.any
        chunk_corpus(second, tokenizer, 128, chunks_dir)
        assert {p.name: p.stat().st_mtime_ns for p in chunks_dir.iterdir()} == cached_files

        # A cache file from an older qaforge, or half-written, is recomputed, not fatal.
        stale = next(iter(chunks_dir.iterdir()))
        stale.write_text("[not json")
        assert chunk_corpus(second, tokenizer, 128, chunks_dir) == chunk_corpus(first, tokenizer, 128)

        site.changing_text = "The changing page now says the tariff is 25 cents per kilowatt-hour at peak."
        del site.routes["/b"]
        edited = fingerprint(sources)
        third, report = ingest(sources)
    assert edited == report.fingerprint != unchanged, "an edited page (and a vanished one) is a change"
    base_changes = {k: [s.removeprefix(base) for s in v] for k, v in report.changes.model_dump().items()}
    assert base_changes["changed"] == ["/changing"]
    assert base_changes["removed"] == []  # /b failed (404) this time: its earlier text is kept
    assert any(d.source.endswith("/b") for d in third.documents)
    assert report.changes.any


def test_unreachable_host_is_recorded(site: FixtureSite, tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    with site.serve() as base:
        sources = web_sources(base, tmp_path, max_depth=0)
        sources = sources.model_copy(update={"web": [*sources.web, sources.web[0].model_copy(update={"start": dead})]})
        corpus, report = ingest(sources)
    assert [d.source for d in corpus.documents] == [f"{base}/"]
    assert [(f.source, f.kind) for f in report.failures] == [(dead, "unreachable")]


def test_sitemap_include_and_exclude(site: FixtureSite, tmp_path: Path) -> None:
    with site.serve() as base:
        corpus, report = ingest(
            web_sources(base, tmp_path, max_depth=0, sitemap=True, exclude=["*/a"])
        )
    assert {d.source.removeprefix(base) for d in corpus.documents} == {"/", "/orphan"}
    assert "/a" not in site.requests


@pytest.mark.parametrize(
    ("sitemap", "kind"),
    [
        (lambda base: (200, "text/html", b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Site map</title>"
                       b"</head><body><h1>Site map</h1><p>All our pages.</p></body></html>"), "content_type"),
        (lambda base: (200, "application/xml", b"<?xml version='1.0'?><html><body>not a sitemap</body></html>"),
         "content_type"),
        (lambda base: (200, "application/xml", b"<?xml version='1.0'?><sitemapindex "
                       b"xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'><sitemap><loc>http://127.0.0.1:9/"
                       b"s.xml</loc></sitemap></sitemapindex>"), "unreachable"),
        (lambda base: (500, "text/plain", b"oops"), "http_error"),
    ],
)
def test_a_broken_sitemap_is_recorded_and_the_crawl_goes_on(site: FixtureSite, tmp_path: Path, sitemap, kind) -> None:
    with site.serve() as base:
        site.routes["/sitemap.xml"] = lambda: sitemap(base)
        corpus, report = ingest(web_sources(base, tmp_path, max_depth=0, sitemap=True))
    assert [d.source.removeprefix(base) for d in corpus.documents] == ["/"]
    [failure] = [f for f in report.failures if "sitemap" in f.reason]
    assert failure.kind == kind, failure


def test_an_unreadable_file_or_a_converter_crash_is_recorded(tmp_path: Path) -> None:
    from qaforge.ingest import _Collector
    from qaforge.sources.state import IngestState

    good = tmp_path / "good.md"
    good.write_text("# Charging\n\n" + "Preconditioning warms the battery before a fast charge in cold weather. " * 4)
    # Reading /proc/self/mem from its start fails with EIO: a real file that cannot be read.
    sources = SourcesConfig(files=[good, Path("/proc/self/mem")], state_dir=tmp_path / "state", min_chars=20)
    corpus, report = ingest(sources)
    assert [d.title for d in corpus.documents] == ["Charging"]
    assert [(f.source, f.kind) for f in report.failures] == [("/proc/self/mem", "unreadable")]

    def crash() -> None:
        raise IndexError("list index out of range")  # as docling's backends do on odd input

    collector = _Collector(sources, IngestState.for_sources(sources))
    collector.add("odd.html", "hash", crash, "docling-html")
    [failure] = collector.failures
    assert (failure.kind, failure.reason) == ("conversion", "IndexError: list index out of range")


def test_a_failed_conversion_is_not_recorded_as_trained_on(tmp_path: Path) -> None:
    """A new version of a file that docling cannot convert keeps the earlier document, and
    the run's fingerprint records the input that document came from: the next check
    (fetch and hash only) sees the new version as a change, so a retrain tries it again."""
    import docx

    manual = tmp_path / "manual.docx"
    document = docx.Document()
    document.add_heading("Charging at home", level=1)
    document.add_paragraph("A Level 2 charger at home adds about 25 miles of range per hour of charging. " * 4)
    document.save(manual)
    sources = SourcesConfig(files=[manual], state_dir=tmp_path / "state", min_chars=20)
    _, first = ingest(sources)
    manual.write_bytes(b"PK\x03\x04 not a zip archive any more")  # a .docx docling cannot open
    corpus, second = ingest(sources)
    assert [d.title for d in corpus.documents] == ["Charging at home"], "the earlier document is kept"
    assert [(f.source, f.kind) for f in second.failures] == [(str(manual), "conversion")]
    assert second.fingerprint == first.fingerprint, "trained on what the kept document came from"
    assert fingerprint(sources) != second.fingerprint, "the check sees the new version as a change"


def test_files_of_every_kind(tmp_path: Path) -> None:
    import docx
    import pptx

    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "install.pdf").write_bytes(make_pdf())
    (folder / "locked.pdf").write_bytes(make_pdf(encrypt="secret"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    document = docx.Document()
    document.add_heading("Depot planning", 1)
    document.add_paragraph("Dwell time is the time a vehicle stays parked at the depot and can charge there overnight.")
    document.save(folder / "nested" / "depot.docx")
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Connector types"
    slide.placeholders[1].text = "CCS2 combines the Type 2 AC connector with two DC pins for fast charging in Europe."
    deck.save(folder / "connectors.pptx")
    (folder / "notes.txt").write_text("Charging notes\n\nPreconditioning warms the battery before a fast charge in cold weather.")
    (folder / "big.md").write_text("# Big\n\n" + "Charging text. " * 5000)
    (folder / "empty.md").write_text("")

    corpus, report = ingest(
        SourcesConfig(files=[folder], min_chars=50, max_file_mb=0.06, state_dir=tmp_path / "state")
    )
    kinds = {Path(d.source).name: d.converter for d in corpus.documents}
    assert kinds == {
        "install.pdf": "docling-pdf", "depot.docx": "docling-docx",
        "connectors.pptx": "docling-pptx", "notes.txt": "docling-txt",
    }
    failures = {Path(f.source).name: f.kind for f in report.failures}
    assert failures == {"locked.pdf": "encrypted", "broken.pdf": "conversion", "big.md": "too_large", "empty.md": "empty"}
    depot = next(d for d in corpus.documents if d.source.endswith("depot.docx"))
    assert depot.title == "Depot planning" and "Dwell time" in depot.markdown
    assert any("native pipeline" in note for note in report.notes)


def test_language_filter(tmp_path: Path) -> None:
    (tmp_path / "en.md").write_text("# Charging\n\nA home charger is usually installed in the garage next to the car.")
    (tmp_path / "de.md").write_text("# Laden\n\nEine Wallbox wird meistens in der Garage direkt neben dem Auto montiert.")
    corpus, report = ingest(SourcesConfig(files=[tmp_path], min_chars=20, language="en", state_dir=tmp_path / "s"))
    assert [Path(d.source).name for d in corpus.documents] == ["en.md"]
    assert [(Path(f.source).name, f.kind) for f in report.failures] == [("de.md", "language")]


def test_nothing_ingested_fails_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(RuntimeError, match=r"nothing could be ingested:\n  .*broken\.pdf: conversion"):
        ingest(SourcesConfig(files=[tmp_path], state_dir=tmp_path / "state"))


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sources.files: no such file or folder"):
        ingest(SourcesConfig(files=[tmp_path / "nope"], state_dir=tmp_path / "state"))


def test_document_ids_do_not_depend_on_where_the_project_lives(tmp_path: Path) -> None:
    """Two checkouts at different paths get the same ids, so the same split."""
    ids, fingerprints = [], []
    for checkout in (tmp_path / "a", tmp_path / "b" / "deeper"):
        shutil.copytree(SAMPLE / "site", checkout / "site")
        shutil.copy(SAMPLE / "docs" / "glossary.md", checkout / "glossary.md")
        corpus, report = ingest(
            SourcesConfig(
                web=[{"start": "levels.html", "serve_dir": checkout / "site", "max_depth": 0}],
                files=[checkout / "glossary.md"],
                state_dir=checkout / "state",
            )
        )
        ids.append({Path(d.source).relative_to(checkout).as_posix(): d.doc_id for d in corpus.documents})
        fingerprints.append(report.fingerprint)
    assert ids[0] == ids[1] and set(ids[0]) == {"site/levels.html", "glossary.md"}
    assert fingerprints[0] == fingerprints[1], "a runner's fresh checkout compares equal to the last run's"
    assert len(set(ids[0].values())) == 2


def test_served_folder_is_reachable_over_http() -> None:
    with serve_directory(SAMPLE / "site") as base:
        assert base.startswith("http://127.0.0.1:")
        assert httpx.get(base + "index.html").status_code == 200


def test_sample_corpus_is_crawled_and_converted(sample_corpus) -> None:
    site_pages = {p.name for p in (SAMPLE / "site").glob("*.html")}
    assert site_pages <= {Path(d.source).name for d in sample_corpus.documents}
    converters = {d.converter for d in sample_corpus.documents}
    assert {"crawl4ai+docling-html", "docling-pdf", "docling-docx", "docling-md"} <= converters
    levels = next(d for d in sample_corpus.documents if d.source.endswith("levels.html"))
    assert levels.title.startswith("EV Charging Levels") and "19.2 kW" in levels.markdown
    assert len(levels.content_hash) == 64 and levels.fetched_at.tzinfo is not None
    for doc in sample_corpus.documents:
        assert "qaforge sample corpus" not in doc.markdown, f"footer left in {doc.source}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_browser_mode_over_cdp(site: FixtureSite, tmp_path: Path) -> None:
    with site.serve() as base:
        corpus, report = ingest(
            web_sources(
                base, tmp_path, browser=True, chromium_path="/usr/bin/chromium",
                max_depth=1, retries=0,
            )
        )
    docs = {d.source.removeprefix(base) for d in corpus.documents}
    assert {"/", "/a", "/b", "/changing"} <= docs
    failures = {f.source.removeprefix(base): f.kind for f in report.failures}
    assert failures["/missing"] == "http_error"
    assert failures["/slow"] == "timeout", report.failures
    assert failures["/private/secret"] == "robots"
    assert "/private/secret" not in site.requests


def test_cleaning_helpers() -> None:
    assert normalize_text("ﬁve\u00a0kW  ＡＣ") == "five kW AC"
    html = "<div id='cookie-consent'>Accept</div><nav>Menu</nav><main><p>Kept text.</p></main>"
    assert "Accept" not in strip_chrome(html) and "Menu" not in strip_chrome(html)
    pages = [f"<p>Shared promo line.</p><p>Page {i} fact.</p>" for i in range(4)]
    blocks = repeated_blocks(pages, share=0.5)
    assert blocks == {"shared promo line."}
    assert remove_blocks(pages[0], blocks) == "<p>Page 0 fact.</p>"
    assert repeated_blocks(pages[:2], share=0.5) == set(), "too few pages to call anything chrome"
