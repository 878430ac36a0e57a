"""Tables and the self-contained HTML report of ``benchmark`` / ``compare``.

    markdown_table(rows, columns)        # GitHub markdown, numbers formatted per column
    write_csv(rows, columns, path)       # atomic
    write_html_report(path, title, sections)  # one file: tables + PNGs embedded as data: URIs, no network

A section is ``("heading", content)`` with content a markdown-style table (rows, columns), a PNG path,
or a paragraph of text. The page has inline CSS only and one inline script that checks every picture
decoded (``data-images`` on ``<body>`` reads ``decoded/total``; a failure is a console error).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path

from rtdet.utils.checkpoint import atomic_write_text

__all__ = ["fmt", "markdown_table", "write_csv", "write_html_report", "Table"]


class Table:
    """Rows (dicts) and the columns to show, in order."""

    def __init__(self, rows: list[dict], columns: list[str] | tuple[str, ...]):
        self.rows, self.columns = rows, list(columns)


def fmt(value, column: str = "") -> str:
    """A cell as text: integers with thousands separators, floats to a precision that suits the column."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if column.startswith(("delta", "ci", "std", "mean")) or "AP" in column:
            return f"{value:.4f}"
        if column in ("p", "p_value"):
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c), c) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], columns, path: str | Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return atomic_write_text(path, buf.getvalue())


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d5; padding: 4px 9px; text-align: right; }
th { background: #f3f3f6; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #e3e3e8; margin: 0.5em 0; }
p.note { color: #555; }
"""

_CHECK = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
    else { console.error("report picture " + i + " (" + imgs[i].alt + ") did not decode"); }
  }
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});
"""


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c), c))}</td>" for c in table.columns) + "</tr>"
                   for r in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png_html(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_html_report(path: str | Path, title: str, sections: list[tuple[str, object]]) -> Path:
    """One self-contained HTML page: ``sections`` of (heading, Table | PNG path | text)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, Table):
            parts.append(_table_html(content))
        elif isinstance(content, Path):
            parts.append(_png_html(content, heading or content.stem))
        else:
            parts.append(f'<p class="note">{html.escape(str(content))}</p>')
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_CHECK}</script></head>\n<body>\n"
            + "\n".join(parts)
            + "\n</body></html>\n")
    return atomic_write_text(path, page)
