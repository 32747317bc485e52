"""Converting files and fetched pages to DoclingDocuments. docling is imported by the
converter, not here: `qaforge sources-changed` lists and hashes the files without it."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from qaforge.records import FailureKind
from qaforge.sources.conversations import conversation_markdown

if TYPE_CHECKING:
    from docling.document_converter import DocumentConverter
    from docling_core.types.doc import DoclingDocument

log = logging.getLogger(__name__)

# .jsonl: the served API's conversation log (serving.conversation_log).
FILE_SUFFIXES = {".pdf", ".docx", ".pptx", ".html", ".htm", ".md", ".markdown", ".txt", ".jsonl"}
# Content types of downloads the crawler hands over to docling.
CONTENT_TYPE_SUFFIXES = {
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "text/markdown": ".md",
    "text/plain": ".txt",
}
NATIVE_PDF_NOTE = (
    "PDFs were converted with docling's native pipeline (text, no headings or tables): "
    "set sources.pdf_artifacts_path to local layout-model artifacts for the standard one"
)


class ConversionError(Exception):
    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def standard_pdf_available(artifacts_path: Path | None) -> bool:
    """docling's standard PDF pipeline needs its layout models on disk and installed."""
    return (
        artifacts_path is not None
        and artifacts_path.is_dir()
        and importlib.util.find_spec("docling_ibm_models") is not None
    )


@functools.cache
def converter(artifacts_path: Path | None) -> DocumentConverter:
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions, PdfPipelineOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption
    from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

    if standard_pdf_available(artifacts_path):
        pdf = PdfFormatOption(pipeline_options=PdfPipelineOptions(artifacts_path=artifacts_path))
    else:
        log.warning(NATIVE_PDF_NOTE)
        pdf = PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=NativePdfPipelineOptions())
    return DocumentConverter(format_options={InputFormat.PDF: pdf})


def convert_html(html: str, name: str, artifacts_path: Path | None = None) -> DoclingDocument:
    from docling.datamodel.base_models import InputFormat

    result = converter(artifacts_path).convert_string(html, InputFormat.HTML, name=name)
    return result.document


def convert_path(path: Path, max_bytes: int, artifacts_path: Path | None = None) -> DoclingDocument:
    """Convert one file; a file that cannot be converted raises ConversionError."""
    from docling.datamodel.base_models import ConversionStatus, InputFormat

    size = path.stat().st_size
    if size > max_bytes:
        raise ConversionError("too_large", f"{size / 2**20:.1f} MB is over sources.max_file_mb")
    if size == 0:
        raise ConversionError("empty", "empty file")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ConversionError("content_type", f"unsupported file type {suffix or '(none)'}")
    if suffix == ".pdf" and b"/Encrypt" in path.read_bytes():
        raise ConversionError("encrypted", "encrypted PDF")
    if suffix in (".txt", ".jsonl"):  # plain text is valid Markdown; a log is rendered as Markdown
        text = path.read_text(errors="replace")
        if suffix == ".jsonl":
            try:
                text = conversation_markdown(text, path.name)
            except ValueError as exc:
                raise ConversionError("conversion", f"not a qaforge conversation log: {exc}") from None
        return converter(artifacts_path).convert_string(text, InputFormat.MD, name=path.name).document
    try:
        result = converter(artifacts_path).convert(path, raises_on_error=False)
    except Exception as exc:  # docling raises for some unreadable files
        raise ConversionError("conversion", f"{type(exc).__name__}: {exc}") from None
    if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        detail = "; ".join(e.error_message for e in result.errors) or result.status.value
        raise ConversionError("conversion", f"docling could not convert it: {detail}")
    return result.document


def iter_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"sources.files: no such file or folder: {path}")
