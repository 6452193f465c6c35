"""Cells of one or more studies side by side: one row per value of the keys asked for (a column of the rows, or a
setting in their `settings_json`, where an unset one reads as its default, e.g. `completion_only_loss`), each metric
as its mean over the group's seeds with the half-width of its 95% t interval (NaN for one seed). Polars only.

    qlbench compare results/sft-smollm2-*/cells.parquet --by completion_only_loss --by format --by bits \\
        --metric eval_answer_loss --metric f1 --out results/sft-table
"""

from __future__ import annotations

import polars as pl

from qlbench.analysis.stats import ci95_halfwidth
from qlbench.results import setting_values


def _key(cells: pl.DataFrame, key: str, defaults: dict) -> pl.Series:
    """A key per cell: its column, else its setting in `settings_json` (a missing one: the default)."""
    if key in cells.columns:
        return cells[key].cast(pl.String)
    if "settings_json" not in cells.columns:
        raise KeyError(key)
    values = setting_values(cells, key, defaults.get(key))
    return pl.Series(key, ["–" if v is None else str(v) for v in values], dtype=pl.String)


def table(cells: pl.DataFrame, by: list[str], metrics: list[str], defaults: dict | None = None) -> pl.DataFrame:
    """One row per group of `by`, in the order the groups first come: `seeds` (cells in it), each metric's mean and
    `<metric>_ci` (95% half-width); diverged cells (status other than ok) are counted in `diverged` and left out of
    the means."""
    missing = [m for m in metrics if m not in cells.columns]
    if missing:
        raise KeyError(f"no column {', '.join(missing)} in the cells")
    keyed = cells.with_columns(_key(cells, k, defaults or {}).alias(f"_{k}") for k in by)
    rows = []
    for values, group in keyed.group_by([f"_{k}" for k in by], maintain_order=True):
        ok = group.filter(pl.col("status") == "ok") if "status" in group.columns else group
        row = {**dict(zip(by, values)), "seeds": ok.height, "diverged": group.height - ok.height}
        for m in metrics:
            v = ok[m].cast(pl.Float64).drop_nulls().drop_nans()
            row[m] = v.mean() if v.len() else float("nan")
            row[f"{m}_ci"] = ci95_halfwidth(v.std(), v.len()) if v.len() >= 2 else float("nan")
        rows.append(row)
    schema = {**{k: pl.String for k in by}, "seeds": pl.Int64, "diverged": pl.Int64,
              **{c: pl.Float64 for m in metrics for c in (m, f"{m}_ci")}}
    return pl.DataFrame(rows, schema=schema)  # groups in the order the cells come (a study's grid order)


def markdown(t: pl.DataFrame, by: list[str], metrics: list[str], digits: int = 4) -> str:
    def cell(r, m):
        v, ci = r[m], r[f"{m}_ci"]
        if v is None or v != v:
            return "–"
        return f"{v:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci == ci else "")

    head = [*by, "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" if h in by else "---:" for h in head) + " |"]
    for r in t.iter_rows(named=True):
        lines.append("| " + " | ".join([*(str(r[k]) for k in by), str(r["seeds"]), *(cell(r, m) for m in metrics)])
                     + " |")
    return "\n".join(lines) + "\n"
