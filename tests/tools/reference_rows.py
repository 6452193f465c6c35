"""Make a study's pinned reference numbers from a run's cell rows (tests/data/reference/<study>/<label>/).

    python tests/tools/reference_rows.py RESULTS/demo/cells tests/data/reference/demo/2026-12-06

Writes `cells.parquet` (a row per cell: every column of its row but timing and provenance, its `config_hash` and
`numerics` kept to build a results tree from), `curves.parquet` (a row per training step, timing left out) and,
where the cells kept their adapters, `adapters.txt` (each adapter's sha256 and cell): a few kB where the rows are
560 kB. tests/tools/same_numbers.py compares a run's aggregates and adapters to them.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import polars as pl

from qlbench.results import CURVE, PROVENANCE, TIMING_COLUMNS, curve_frame

KEPT = ("config_hash", "numerics")  # provenance a results tree needs to read as the cells it was made for


def reference(cells_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = pl.concat([pl.read_parquet(p) for p in sorted(cells_dir.rglob("row.parquet"))], how="diagonal_relaxed")
    drop = (set(PROVENANCE) - set(KEPT)) | set(TIMING_COLUMNS)
    cells = rows.drop([c for c in rows.columns if c in drop or c == CURVE])
    curves = curve_frame(rows).drop(*(c for c in TIMING_COLUMNS if c in rows[CURVE].dtype.inner.to_schema()))
    return cells, curves


def adapter_digests(cells_dir: Path) -> str:
    """`<sha256>  <cell path>` of every cell's adapter.safetensors, a line each, in path order."""
    paths = sorted(cells_dir.rglob("adapter.safetensors"))
    return "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.parent.relative_to(cells_dir)}\n" for p in paths)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cells, curves = reference(Path(sys.argv[1]))
    cells.write_parquet(out / "cells.parquet")
    curves.write_parquet(out / "curves.parquet")
    if digests := adapter_digests(Path(sys.argv[1])):
        (out / "adapters.txt").write_text(digests)
    print(f"{out}: {cells.height} cells, {curves.height} curve rows")
