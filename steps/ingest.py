"""Ingest: crawl web sources (crawl4ai) and convert them and local files (docling)
into deduplicated Documents with provenance."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from bs4 import BeautifulSoup
from docling.datamodel.base_models import InputFormat
from docling.datamodel.pipeline_options import NativePdfPipelineOptions, PdfPipelineOptions
from docling.document_converter import DocumentConverter, PdfFormatOption
from docling.pipeline.native_pdf_pipeline import NativePdfPipeline
from docling_core.types.doc import DoclingDocument
from tqdm import tqdm
from zenml import step

from qaforge.config import SourcesConfig, WebSource
from qaforge.records import Corpus, Document, IngestFailure, content_hash

log = logging.getLogger(__name__)

# Page chrome that repeats on every page of a site and carries no domain facts.
BOILERPLATE_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form")
FILE_SUFFIXES = {".pdf", ".docx", ".pptx", ".html", ".htm", ".md", ".markdown"}


@dataclass
class CrawledPage:
    source: str
    title: str
    html: str


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` on a free 127.0.0.1 port; yield its base URL."""
    if not directory.is_dir():
        raise FileNotFoundError(f"sources.web.serve_dir: no such folder: {directory}")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def _crawl(start_url: str, source: WebSource) -> list:
    # crawl4ai pulls in litellm and playwright: import it only when crawling.
    from crawl4ai import AsyncWebCrawler, CacheMode, CrawlerRunConfig, HTTPCrawlerConfig
    from crawl4ai.async_crawler_strategy import AsyncHTTPCrawlerStrategy
    from crawl4ai.deep_crawling import BFSDeepCrawlStrategy

    run_config = CrawlerRunConfig(
        deep_crawl_strategy=BFSDeepCrawlStrategy(
            max_depth=source.max_depth, include_external=False, max_pages=source.max_pages
        ),
        cache_mode=CacheMode.BYPASS,
        check_robots_txt=source.respect_robots_txt,
        verbose=False,
    )
    strategy = AsyncHTTPCrawlerStrategy(browser_config=HTTPCrawlerConfig())
    async with AsyncWebCrawler(crawler_strategy=strategy) as crawler:
        return await crawler.arun(start_url, config=run_config)


def crawl_site(source: WebSource) -> tuple[list[CrawledPage], list[IngestFailure]]:
    """Breadth-first crawl of one web source with crawl4ai's no-browser HTTP strategy."""
    os.environ.setdefault("CRAWL4AI_NO_CLOUD_NOTICE", "1")
    with contextlib.ExitStack() as stack:
        if source.serve_dir is not None:
            base = stack.enter_context(serve_directory(source.serve_dir))
            start_url = base + source.start.lstrip("/")
        else:
            base, start_url = "", source.start
        results = asyncio.run(_crawl(start_url, source))

    pages: list[CrawledPage] = []
    failures: list[IngestFailure] = []
    seen: set[str] = set()
    for result in tqdm(results, desc=f"crawl {source.start}", unit="page"):
        # Served pages get a stable source name: the port changes every run.
        name = (
            f"{source.serve_dir}/{urlparse(result.url).path.lstrip('/')}" if base else result.url
        )
        if name in seen:  # deep crawls return the start URL twice
            continue
        seen.add(name)
        if not result.success or not result.html:
            status = getattr(result, "status_code", None)
            failures.append(
                IngestFailure(source=name, reason=f"HTTP {status}: {result.error_message or 'empty page'}")
            )
            continue
        title = (result.metadata or {}).get("title") or name
        pages.append(CrawledPage(source=name, title=title, html=result.html))
    return pages, failures


def strip_boilerplate(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(BOILERPLATE_TAGS):
        tag.decompose()
    return str(soup)


@functools.cache
def _converter(pdf_artifacts_path: Path | None) -> DocumentConverter:
    if pdf_artifacts_path is not None and pdf_artifacts_path.is_dir():
        pdf = PdfFormatOption(pipeline_options=PdfPipelineOptions(artifacts_path=pdf_artifacts_path))
    else:
        log.warning(
            "No docling layout-model artifacts (sources.pdf_artifacts_path): PDFs use the "
            "native pipeline, which keeps text but not headings or tables."
        )
        pdf = PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=NativePdfPipelineOptions())
    return DocumentConverter(format_options={InputFormat.PDF: pdf})


def _document(source: str, title: str, converted: DoclingDocument, converter: str) -> Document:
    markdown = converted.export_to_markdown()
    return Document(
        doc_id=hashlib.sha256(source.encode()).hexdigest()[:16],
        source=source,
        title=title,
        markdown=markdown,
        content_hash=content_hash(markdown),
        fetched_at=datetime.now(timezone.utc),
        converter=converter,
        docling_json=converted.model_dump_json(),
    )


def convert_page(page: CrawledPage, pdf_artifacts_path: Path | None = None) -> Document:
    result = _converter(pdf_artifacts_path).convert_string(
        strip_boilerplate(page.html), InputFormat.HTML, name=Path(page.source).name or "page.html"
    )
    return _document(page.source, page.title, result.document, "crawl4ai+docling-html")


def convert_file(path: Path, pdf_artifacts_path: Path | None = None) -> Document:
    result = _converter(pdf_artifacts_path).convert(path, raises_on_error=True)
    doc = result.document
    title = next((t.text for t in doc.texts if t.label in ("title", "section_header")), path.stem)
    return _document(str(path), title, doc, f"docling-{path.suffix.lstrip('.').lower()}")


def iter_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"sources.files: no such file or folder: {path}")


def sources_fingerprint(sources: SourcesConfig) -> str:
    """Hash of the local source files' names, sizes and mtimes.

    Passed to the ingest step so ZenML's cache misses when a local file changes.
    """
    roots = list(sources.files) + [w.serve_dir for w in sources.web if w.serve_dir]
    digest = hashlib.sha256()
    for root in roots:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file():
                stat = f.stat()
                digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def ingest(sources: SourcesConfig) -> Corpus:
    """Crawl and convert every source; keep the first of exact duplicates."""
    documents: list[Document] = []
    failures: list[IngestFailure] = []
    for web in sources.web:
        pages, crawl_failures = crawl_site(web)
        failures.extend(crawl_failures)
        for page in tqdm(pages, desc="convert pages", unit="page"):
            documents.append(convert_page(page, sources.pdf_artifacts_path))
    for path in tqdm(list(iter_files(sources.files)), desc="convert files", unit="file"):
        try:
            documents.append(convert_file(path, sources.pdf_artifacts_path))
        except Exception as exc:  # a bad file is recorded, never fatal to the run
            failures.append(IngestFailure(source=str(path), reason=f"{type(exc).__name__}: {exc}"))

    unique: dict[str, Document] = {}
    for doc in documents:
        if doc.content_hash in unique:
            failures.append(
                IngestFailure(source=doc.source, reason=f"duplicate of {unique[doc.content_hash].source}")
            )
        elif doc.markdown.strip():
            unique[doc.content_hash] = doc
        else:
            failures.append(IngestFailure(source=doc.source, reason="no text after conversion"))
    for failure in failures:
        log.warning("ingest: %s: %s", failure.source, failure.reason)
    if not unique:
        raise RuntimeError(
            "nothing could be ingested:\n" + "\n".join(f"  {f.source}: {f.reason}" for f in failures)
        )
    log.info("ingested %d documents (%d failures)", len(unique), len(failures))
    return Corpus(documents=list(unique.values()), failures=failures)


@step
def ingest_step(sources: SourcesConfig, fingerprint: str) -> Corpus:
    """`fingerprint` (see `sources_fingerprint`) is only a cache key."""
    return ingest(sources)
