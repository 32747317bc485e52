"""Crawling web sources with crawl4ai: breadth-first, bounded, polite, retried.

crawl4ai fetches each page (its no-browser HTTP strategy by default, or a Chromium
over CDP for JavaScript pages) and checks robots.txt; this module decides what to
fetch next, retries 429/5xx/timeouts with backoff, and turns every page that could
not be had into a worded `IngestFailure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import functools
import logging
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler
from typing import Any
from urllib.parse import urldefrag, urljoin, urlparse
from xml.etree import ElementTree

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tqdm import tqdm

from qaforge.config import WebSource
from qaforge.records import FailureKind, IngestFailure

log = logging.getLogger(__name__)

# Exceptions crawl4ai's HTTP strategy reports through its `on_error` hook while
# fetching the current URL; a context variable keeps concurrent fetches apart.
_fetch_errors: contextvars.ContextVar[list[BaseException]] = contextvars.ContextVar("fetch_errors")


@dataclass
class FetchedPage:
    url: str
    source: str = ""  # stable name: the URL, or the file path for a served folder
    status: int | None = None
    title: str = ""
    html: str | None = None
    file: Path | None = None  # a non-HTML body (PDF, DOCX, ...) saved by crawl4ai
    content_type: str = ""
    links: list[str] = field(default_factory=list)


@dataclass
class CrawlOutcome:
    pages: list[FetchedPage]
    failures: list[IngestFailure]


class _Retryable(Exception):
    def __init__(self, failure: IngestFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_on_loopback(handler: Callable[..., BaseRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free 127.0.0.1 port; yield the base URL (no trailing slash)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` on a free 127.0.0.1 port; yield its base URL."""
    if not directory.is_dir():
        raise FileNotFoundError(f"sources.web.serve_dir: no such folder: {directory}")
    with serve_on_loopback(functools.partial(_QuietHandler, directory=str(directory))) as base:
        yield base + "/"


@contextlib.contextmanager
def launched_chromium(path: Path) -> Iterator[str]:
    """Start the user's Chromium headless with a DevTools port; yield its CDP URL."""
    profile = tempfile.mkdtemp(prefix="qaforge-chromium-")
    process = subprocess.Popen(
        [
            str(path), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None  # stderr=PIPE
    try:
        for line in process.stderr:
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                yield match[1]
                break
        else:
            raise RuntimeError(f"sources.web.chromium_path: {path} exited without a DevTools URL")
    finally:
        process.terminate()
        process.wait(timeout=10)


def link_allowed(url: str, origin: str, source: WebSource) -> bool:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return False
    if source.same_domain and parsed.netloc != urlparse(origin).netloc:
        return False
    if source.include and not any(fnmatch.fnmatch(url, p) for p in source.include):
        return False
    return not any(fnmatch.fnmatch(url, p) for p in source.exclude)


def sitemap_urls(start_url: str, timeout: float) -> tuple[list[str], list[IngestFailure]]:
    """<loc> entries of the site's /sitemap.xml (one level of sitemap index followed),
    and what went wrong on the way: a sitemap that is missing, unreachable or not XML
    (many sites answer /sitemap.xml with an HTML page and status 200) only costs its
    seeds, never the crawl."""
    root = urljoin(start_url, "/sitemap.xml")
    urls: list[str] = []
    failures: list[IngestFailure] = []
    pending = [root]
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        while pending:
            url = pending.pop(0)
            try:
                response = client.get(url)
            except httpx.TimeoutException as exc:
                failures.append(IngestFailure(source=url, kind="timeout", reason=f"sitemap: {exc!r}"))
                continue
            except httpx.HTTPError as exc:
                failures.append(IngestFailure(source=url, kind="unreachable", reason=f"sitemap: {exc!r}"))
                continue
            if response.status_code == 404 and url == root:  # no sitemap: nothing to report
                continue
            if response.status_code != 200:
                failures.append(IngestFailure(source=url, kind="http_error", status=response.status_code,
                                              reason=f"sitemap: HTTP {response.status_code}"))
                continue
            try:
                tree = ElementTree.fromstring(response.content)
            except ElementTree.ParseError as exc:
                failures.append(IngestFailure(
                    source=url, kind="content_type", status=200,
                    reason=f"sitemap is not XML ({response.headers.get('content-type', 'no content type')}): {exc}",
                ))
                continue
            if tree.tag.rpartition("}")[2] not in ("urlset", "sitemapindex"):
                failures.append(IngestFailure(source=url, kind="content_type", status=200,
                                              reason=f"sitemap is <{tree.tag.rpartition('}')[2]}>, not a sitemap"))
                continue
            namespace = tree.tag.partition("}")[0] + "}" if tree.tag.startswith("{") else ""
            locs = [e.text.strip() for e in tree.iter(f"{namespace}loc") if e.text]
            if tree.tag.endswith("sitemapindex"):
                pending.extend(locs)
            else:
                urls.extend(locs)
    for failure in failures:
        log.warning("ingest: %s: %s", failure.source, failure.reason)
    return urls, failures


def _classify_failure(url: str, result: Any, errors: list[BaseException]) -> IngestFailure:
    import aiohttp

    message = (result.error_message or "").strip()
    status = next((e.status_code for e in errors if hasattr(e, "status_code")), None)
    status = status or result.status_code
    kind: FailureKind
    if "robots.txt" in message:
        kind, reason = "robots", "disallowed by robots.txt"
    elif any(isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)) for e in errors) or re.search(
        r"Timeout \d+ms exceeded", message  # browser mode (playwright)
    ):
        kind, reason = "timeout", "no response before the timeout"
    elif status is not None and status >= 400:
        kind, reason = "http_error", f"HTTP {status}"
    elif "anti-bot" in message:
        # crawl4ai's block detector also fires on near-empty pages.
        kind = "empty" if "minimal_text" in message or "empty" in message else "blocked"
        reason = message.splitlines()[0]
    elif errors:
        kind, reason = "unreachable", f"{type(errors[-1]).__name__}: {errors[-1]}"
    else:
        kind, reason = "unreachable", _first_error_line(message)
    return IngestFailure(source=url, kind=kind, reason=reason, status=status)


def _first_error_line(message: str) -> str:
    """crawl4ai wraps errors in a dump of its own source; keep the error itself."""
    lines = [ln.strip() for ln in message.splitlines()]
    wanted = [ln for ln in lines if ln.startswith(("Error:", "Page.", "net::")) or "ERR_" in ln]
    return (wanted or lines or ["no response"])[-1]


def _retryable(failure: IngestFailure) -> bool:
    return failure.kind == "timeout" or (
        failure.kind == "http_error" and (failure.status == 429 or (failure.status or 0) >= 500)
    )


@contextlib.asynccontextmanager
async def _crawler(source: WebSource, downloads: Path) -> AsyncIterator[Any]:
    # crawl4ai pulls in litellm and playwright: import it only when crawling.
    from crawl4ai import AsyncWebCrawler, BrowserConfig, HTTPCrawlerConfig
    from crawl4ai.async_crawler_strategy import AsyncHTTPCrawlerStrategy

    os.environ.setdefault("CRAWL4AI_NO_CLOUD_NOTICE", "1")
    with contextlib.ExitStack() as stack:
        if source.browser:
            if source.cdp_url:
                cdp_url = source.cdp_url
            else:
                assert source.chromium_path is not None  # WebSource asks browser mode for one of the two
                cdp_url = stack.enter_context(launched_chromium(source.chromium_path))
            crawler = AsyncWebCrawler(
                config=BrowserConfig(
                    browser_mode="cdp", cdp_url=cdp_url, accept_downloads=True,
                    downloads_path=str(downloads), verbose=False,
                )
            )
        else:
            strategy = AsyncHTTPCrawlerStrategy(
                browser_config=HTTPCrawlerConfig(downloads_path=str(downloads))
            )

            async def record_error(error: BaseException) -> None:
                with contextlib.suppress(LookupError):
                    _fetch_errors.get().append(error)

            strategy.set_hook("on_error", record_error)
            crawler = AsyncWebCrawler(crawler_strategy=strategy)
        async with crawler:
            yield crawler


async def _crawl(source: WebSource, start_url: str, downloads: Path) -> CrawlOutcome:
    from crawl4ai import CacheMode, CrawlerRunConfig

    run_config = CrawlerRunConfig(
        cache_mode=CacheMode.BYPASS,
        check_robots_txt=source.respect_robots_txt,
        page_timeout=int(source.timeout_seconds * 1000),
        verbose=False,
    )
    pages: list[FetchedPage] = []
    failures: list[IngestFailure] = []
    # Pages of one CDP browser share a context, and a page that times out can take
    # the others down with it: browser mode fetches one page at a time.
    semaphore = asyncio.Semaphore(1 if source.browser else source.concurrency)
    progress = tqdm(total=source.max_pages, desc=f"crawl {start_url}", unit="page")

    async def fetch(crawler: Any, url: str) -> FetchedPage | IngestFailure:
        async with semaphore:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(source.retries + 1),
                    wait=wait_exponential(multiplier=0.5, max=10),
                    retry=retry_if_exception_type(_Retryable),
                    reraise=True,
                ):
                    with attempt:
                        if source.delay_seconds:
                            await asyncio.sleep(source.delay_seconds)
                        errors: list[BaseException] = []
                        _fetch_errors.set(errors)
                        result = await crawler.arun(url, config=run_config)
                        # Browser mode reports an error page as a success.
                        if result.success and (result.status_code or 200) < 400:
                            return _fetched(url, result)
                        failure = _classify_failure(url, result, errors)
                        if _retryable(failure):
                            raise _Retryable(failure)
                        return failure
            except _Retryable as exc:
                exc.failure.reason += f" (after {source.retries + 1} tries)"
                return exc.failure
            finally:
                progress.update()
            raise AssertionError("each try returns or raises, and the last one's error is re-raised")

    seeds = [start_url]
    sitemap_failures: list[IngestFailure] = []
    if source.sitemap:
        found, sitemap_failures = await asyncio.to_thread(sitemap_urls, start_url, source.timeout_seconds)
        seeds += found
    seen: set[str] = set()
    level = []
    for url in seeds:
        url = urldefrag(url)[0]
        if url not in seen and (url == start_url or link_allowed(url, start_url, source)):
            seen.add(url)
            level.append(url)
    async with _crawler(source, downloads) as crawler:
        for depth in range(source.max_depth + 1):
            level = level[: source.max_pages - len(pages) - len(failures)]
            if not level:
                break
            outcomes = await asyncio.gather(*(fetch(crawler, url) for url in level))
            next_level: list[str] = []
            for outcome in outcomes:
                if isinstance(outcome, IngestFailure):
                    failures.append(outcome)
                    continue
                pages.append(outcome)
                # A redirect can land on a URL that is queued too.
                seen.add(outcome.url)
                for link in outcome.links if depth < source.max_depth else []:
                    link = urldefrag(link)[0]
                    if link not in seen and link_allowed(link, start_url, source):
                        seen.add(link)
                        next_level.append(link)
            level = next_level
    progress.close()
    return CrawlOutcome(pages=pages, failures=failures + sitemap_failures)


def _fetched(url: str, result: Any) -> FetchedPage:
    headers = {k.lower(): v for k, v in (result.response_headers or {}).items()}
    page = FetchedPage(
        url=urldefrag(result.redirected_url or result.url or url)[0],
        status=result.status_code,
        content_type=headers.get("content-type", "").split(";")[0].strip().lower(),
        title=(result.metadata or {}).get("title") or "",
    )
    if result.downloaded_files:
        page.file = Path(result.downloaded_files[0])
    else:
        page.html = result.html
    page.links = [link["href"] for link in (result.links or {}).get("internal", [])]
    return page


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    """One loop for every crawl in this process: crawl4ai's browser mode keeps
    asyncio locks at module level, which fail on any later, different loop."""
    return asyncio.new_event_loop()


def crawl_site(source: WebSource, downloads: Path) -> CrawlOutcome:
    """Crawl one web source; a served folder gets stable, path-based source names."""
    with contextlib.ExitStack() as stack:
        if source.serve_dir is not None:
            base = stack.enter_context(serve_directory(source.serve_dir))
            start_url = base + source.start.lstrip("/")
        else:
            base, start_url = "", source.start
        outcome = _event_loop().run_until_complete(_crawl(source, start_url, downloads))

    def name(url: str) -> str:
        if base and url.startswith(base):
            return f"{source.serve_dir}/{urlparse(url).path.lstrip('/')}"
        return url

    for page in outcome.pages:
        page.source = name(page.url)
    for failure in outcome.failures:
        failure.source = name(failure.source)
    # Two URLs (e.g. / and /index.html) may serve one page; keep the first.
    unique: dict[str, FetchedPage] = {}
    for page in outcome.pages:
        unique.setdefault(page.source, page)
    outcome.pages = list(unique.values())
    return outcome
