"""The report's building blocks, how numbers are written in it, and its rendering as
Markdown and as one self-contained HTML file. Both documents are rendered from the
same list of sections, so they cannot drift apart."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

SIGNIFICANT = 4
CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a202c; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.75rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #cbd5e0; padding: 0.3rem 0.6rem; vertical-align: top; }
th { background: #edf2f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td { white-space: pre-wrap; }
tr:nth-child(even) td { background: #f7fafc; }
img { max-width: 100%; border: 1px solid #e2e8f0; margin: 0.5rem 0 1.5rem; }
"""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # One "l" or "r" per column; by default the first left and the numbers right.

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.headers) - 1)


@dataclass
class Image:
    path: Path


Block = str | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block]


# ---- numbers and labels --------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Four significant digits in fixed notation: latencies in the thousands and ROUGE
    near zero both stay readable, and nothing turns into 1.235e+04."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def fmt_signed(value: float) -> str:
    return ("+" if value > 0 else "") + fmt(value)


def fmt_count(value: float | None) -> str:
    # Question counts arrive as floats inside by_source; "12.00 questions" would read oddly.
    return "" if value is None else str(round(value))


def short_source(source: str) -> str:
    """The last path component of a URL or path, which is what tells sources apart."""
    parts = [p for p in re.split(r"[/\\]", source.split("?", 1)[0].split("#", 1)[0]) if p]
    return parts[-1] if parts else source


def source_labels(by_source: dict[str, dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(k for values in by_source.values() for k in values if k != "n"))


# ---- rendering -----------------------------------------------------------------------------------


def markdown_cell(text: str) -> str:
    # A raw pipe would split the cell and a raw newline would end the table row.
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += [
                    "| " + " | ".join(markdown_cell(h) for h in block.headers) + " |",
                    "|" + "|".join("---:" if a == "r" else "---" for a in block.alignment()) + "|",
                    *("| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in block.rows),
                ]
            elif isinstance(block, Image):
                # Relative, so the report and its plots can be moved together.
                lines.append(f"![{block.path.stem}]({block.path.name})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    cells = ['<td class="num">{}</td>' if a == "r" else "<td>{}</td>" for a in table.alignment()]
    body = "".join(
        "<tr>" + "".join(cell.format(html.escape(c)) for cell, c in zip(cells, row)) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_image(image: Image) -> str:
    # Embedded, so the single HTML file can be attached or mailed on its own.
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(image.path.stem)}" src="data:image/png;base64,{data}">'


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Image):
                parts.append(html_image(block))
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
