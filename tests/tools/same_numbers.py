"""Are two runs of the same studies number for number the same? (A refactoring must leave every number as it was.)

    python tests/tools/same_numbers.py BEFORE_RESULTS AFTER_RESULTS demo micro sensitivity

Compares, for each study, `cells.parquet` (every column but provenance and timing), `curves.parquet` (loss, lr,
gradient norm, gradient variance per step) and every cell's `adapter.safetensors`, byte for byte. Exits 1 and
names the first differences when anything differs; prints one line per study when all is equal.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import polars as pl

from qlbench.results import PROVENANCE, TIMING_COLUMNS

KEYS = ["model", "n_train", "bits", "rank", "mask", "seed"]
SKIP = set(PROVENANCE) | set(TIMING_COLUMNS)  # differ run to run (a curve's step_time_s among the timings)


def numbers(table: pl.DataFrame) -> pl.DataFrame:
    """A cells or curves table less its provenance and timing columns: what two runs of the same code share."""
    return table.drop([c for c in table.columns if c in SKIP])


def reference_differences(reference: Path, results: Path) -> list[str]:
    """How a study's aggregates (`results`/cells.parquet, curves.parquet) and its cells' adapters differ from a
    pinned reference's (tests/tools/reference_rows.py made it): [] when every number and weight is the same, bit for
    bit (the adapters where the reference has their digests, adapters.txt)."""
    out = [f"{table}: {d}" for table in ("cells", "curves")
           for d in differences(numbers(pl.read_parquet(reference / f"{table}.parquet")),
                                numbers(pl.read_parquet(results / f"{table}.parquet")), set())]
    pinned = reference / "adapters.txt"
    for line in pinned.read_text().splitlines() if pinned.exists() else []:
        digest, cell = line.split(maxsplit=1)
        adapter = results / "cells" / cell / "adapter.safetensors"
        if not adapter.exists() or hashlib.sha256(adapter.read_bytes()).hexdigest() != digest:
            out.append(f"adapter differs: {cell}")
    return out


def differences(before: pl.DataFrame, after: pl.DataFrame, skip: set[str]) -> list[str]:
    out = []
    if set(before.columns) != set(after.columns):
        out.append(f"columns differ: only before {sorted(set(before.columns) - set(after.columns))}, "
                   f"only after {sorted(set(after.columns) - set(before.columns))}")
    keys = [k for k in KEYS + ["step"] if k in before.columns]
    b, a = before.sort(keys), after.sort(keys)
    if b.height != a.height:
        return out + [f"{b.height} rows before, {a.height} after"]
    for col in sorted(set(b.columns) & set(a.columns) - skip):
        x, y = b[col], a[col]
        same = x.dtype == y.dtype and (x.is_null() == y.is_null()).all() and (
            (x == y) | (x.is_nan() & y.is_nan()) if x.dtype.is_float() else (x == y)).fill_null(True).all()
        if not same:
            out.append(f"{col}: e.g. {x.head(3).to_list()} before, {y.head(3).to_list()} after")
    return out


def main(before: Path, after: Path, studies: list[str]) -> int:
    failed = False
    for study in studies:
        problems = []
        for table in ("cells", "curves"):
            problems += [f"{table}: {d}" for d in differences(pl.read_parquet(before / study / f"{table}.parquet"),
                                                              pl.read_parquet(after / study / f"{table}.parquet"),
                                                              SKIP)]
        adapters = sorted((before / study / "cells").rglob("adapter.safetensors"))
        for path in adapters:
            twin = after / path.relative_to(before)
            if not twin.exists() or twin.read_bytes() != path.read_bytes():
                problems.append(f"adapter differs: {path.relative_to(before)}")
        cells = pl.read_parquet(before / study / "cells.parquet").height
        if problems:
            failed = True
            print(f"{study}: DIFFERENT\n  " + "\n  ".join(problems[:20]))
        else:
            print(f"{study}: {cells} cells and {len(adapters)} adapters identical (every metric, curve and weight)")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
