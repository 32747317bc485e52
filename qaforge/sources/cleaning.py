"""Cleaning fetched HTML before conversion: page chrome, cookie banners, text blocks
repeated across a site, unicode; and an optional language check."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from bs4 import BeautifulSoup, Tag

CHROME_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "template")
_BANNER = re.compile(r"cookie|consent|gdpr|newsletter|banner", re.IGNORECASE)
BLOCK_TAGS = ("p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dt", "dd", "td", "th")
MIN_SITE_PAGES = 3  # below this, "repeated on most pages" means little


def normalize_text(text: str) -> str:
    """NFKC (ligatures, full-width forms, non-breaking spaces) and single spaces."""
    return re.sub(r"[ \t\u00a0]+", " ", unicodedata.normalize("NFKC", text))


def _block_key(tag: Tag) -> str:
    return " ".join(tag.get_text(" ", strip=True).split()).lower()


def strip_chrome(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(CHROME_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.decomposed or tag.name in ("html", "body", "main", "article"):
            continue
        marker = " ".join(str(v) for a in ("id", "class", "role") for v in tag.get_attribute_list(a) if v)
        if _BANNER.search(marker):
            tag.decompose()
    return str(soup)


def repeated_blocks(pages: list[str], share: float) -> set[str]:
    """Texts of blocks found on more than `share` of a site's pages."""
    if len(pages) < MIN_SITE_PAGES:
        return set()
    counts: Counter[str] = Counter()
    for html in pages:
        soup = BeautifulSoup(html, "html.parser")
        counts.update({_block_key(t) for t in soup.find_all(BLOCK_TAGS)} - {""})
    return {text for text, n in counts.items() if n > share * len(pages)}


def remove_blocks(html: str, blocks: set[str]) -> str:
    if not blocks:
        return html
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(BLOCK_TAGS):
        if not tag.decomposed and _block_key(tag) in blocks:
            tag.decompose()
    return str(soup)


def detect_language(text: str) -> str | None:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    try:
        return detect(text[:5000])
    except LangDetectException:
        return None
