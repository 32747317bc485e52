"""Ingest throughput: crawl + convert a generated 200-page site served on 127.0.0.1,
the same again with nothing changed (incremental re-ingest), and PDF conversion.

    python bench/ingest.py [--pages 200] [--pdf-pages 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CRAWL4AI_NO_CLOUD_NOTICE", "1")

from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

from qaforge.config import (
    SourcesConfig,
    WebSource,
)
from qaforge.ingest import ingest
from qaforge.sources.files import convert_path
from qaforge.sources.web import crawl_site

WORDS = (
    "charger battery connector voltage current kilowatt tariff depot cable inlet session "
    "network payment preconditioning circuit breaker plug standard protocol range"
).split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(14)).capitalize() + "."


def make_site(root: Path, pages: int, rng: random.Random) -> None:
    for i in range(pages):
        # A binary-tree of links reaches every page within log2(pages) clicks.
        links = " ".join(f"<a href='p{j}.html'>page {j}</a>" for j in (2 * i + 1, 2 * i + 2) if j < pages)
        body = "".join(f"<p>{sentence(rng)}</p>" for _ in range(8))
        (root / f"p{i}.html").write_text(
            f"<html><head><title>Page {i}</title></head><body><nav>{links}</nav>"
            f"<h1>Page {i}</h1>{body}<footer>Bench site</footer></body></html>"
        )


def make_pdf(path: Path, pages: int, rng: random.Random) -> None:
    styles = getSampleStyleSheet()
    story = []
    for i in range(pages):
        story += [Paragraph(f"Section {i}", styles["Heading1"])]
        story += [Paragraph(" ".join(sentence(rng) for _ in range(6)), styles["Normal"]) for _ in range(6)]
        story.append(PageBreak())
    SimpleDocTemplate(str(path)).build(story)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--pdf-pages", type=int, default=40)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        site = tmp_path / "site"
        site.mkdir()
        make_site(site, args.pages, rng)
        web = WebSource(start="p0.html", serve_dir=site, max_depth=10, max_pages=args.pages, concurrency=8)
        sources = SourcesConfig(web=[web], state_dir=tmp_path / "state", min_chars=0)

        crawl, crawl_s = timed(lambda: crawl_site(web, tmp_path / "downloads"))
        (corpus, _), first_s = timed(lambda: ingest(sources))
        (_, report), second_s = timed(lambda: ingest(sources))
        pdf = tmp_path / "bench.pdf"
        make_pdf(pdf, args.pdf_pages, rng)
        _, pdf_s = timed(lambda: convert_path(pdf, 2**30))

    rows = [
        ("crawl only (crawl4ai HTTP)", len(crawl.pages), "pages", crawl_s),
        ("ingest: crawl+clean+convert", len(corpus.documents), "pages", first_s),
        ("re-ingest, nothing changed", report.changes.counts()["unchanged"], "pages", second_s),
        ("PDF conversion (native)", args.pdf_pages, "PDF pages", pdf_s),
    ]
    print(f"{'benchmark':<30}{'items':>8}  {'unit':<10}{'seconds':>9}{'items/s':>10}")
    for name, n, unit, seconds in rows:
        print(f"{name:<30}{n:>8}  {unit:<10}{seconds:>9.2f}{n / seconds:>10.1f}")


if __name__ == "__main__":
    main()
