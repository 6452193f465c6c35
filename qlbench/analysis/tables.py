"""A polars table as Markdown (for the README and a terminal) and as a small HTML page (a Snakemake report item)."""

from __future__ import annotations

import html as _html

import polars as pl


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.4g}"
    return "–" if v is None else str(v)


def markdown(table: pl.DataFrame, title: str) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.iter_rows()]
    return "\n".join(lines) + "\n"


def html(table: pl.DataFrame, title: str, note: str = "") -> str:
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in table.iter_rows())
    return ("<!doctype html><meta charset='utf-8'><style>body{font-family:sans-serif}table{border-collapse:collapse;"
            "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
            f"</style><h3>{_html.escape(title)}</h3><p>{_html.escape(note)}</p><table><tr>{head}</tr>{body}</table>")


def write(out, name: str, table: pl.DataFrame, title: str, note: str = "") -> None:
    """NAME.md (README, terminal) and NAME.html (the Snakemake report shows it as a table) in the folder `out`."""
    (out / f"{name}.md").write_text(markdown(table, title) + (f"\n{note}\n" if note else ""))
    (out / f"{name}.html").write_text(html(table, title, note))
