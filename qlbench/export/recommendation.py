"""One row of a sensitivity recommendation (recommendation.parquet) and the width it gives every layer: what both
exports (`hqq`, `gguf`, `compressed_tensors`) start from. Imports no torch, and polars only to read the table."""

from __future__ import annotations

import json
import re

from qlbench.errors import QlbenchError
from qlbench.study import masks as masklang

KEYS = ("model", "n_train", "rank", "level")


def pick(rec, **wanted) -> dict:
    """The one row of the recommendation table `rec` (polars) that matches `wanted` (model, n_train, rank, level;
    None: any)."""
    import polars as pl

    rows = rec
    for k, v in wanted.items():
        if v is not None and k in rows.columns:
            rows = rows.filter(pl.col(k).cast(pl.String) == str(v))
    if rows.height != 1:
        keys = [k for k in KEYS if k in rec.columns]
        choices = "; ".join(", ".join(f"{k} {r[k]}" for k in keys) for r in rec.select(keys).iter_rows(named=True))
        raise QlbenchError(f"{rows.height} recommendations match (choose one with --model/--rank/--n-train/--level): "
                           f"{choices or 'none in the file'}")
    return rows.row(0, named=True)


def widths(row: dict, lay: masklang.Layout, high_bits: int) -> dict[str, int]:
    """Every quantizable linear of the layout -> its recommended width (16: left alone)."""
    if row.get("bit_map"):
        units = {u: int(w) for u, w in json.loads(row["bit_map"]).items()}
    else:
        units = {row["mask"]: int(row["bits"])}
    out = dict.fromkeys(lay.all_names(), high_bits)
    seen: dict[str, str] = {}
    for unit, w in units.items():
        for name in masklang.resolve(unit, lay):
            if name in seen and out[name] != w:
                raise QlbenchError(f"{name} is in {seen[name]} and in {unit} at other widths")
            out[name], seen[name] = w, unit
    return out


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_name(row: dict) -> str:
    """<model>_r<rank>[_n<N>]_<level>: the exports' file names after their kind (hqq_..., gguf_..., ct_...)."""
    n = f"_n{row['n_train']}" if row.get("n_train") is not None else ""
    return _SAFE.sub("_", f"{row.get('model')}_r{row.get('rank')}{n}_{row.get('level', 'all')}")
