"""How far each quantized cell drifts from its 16-bit reference (same model, n_train, rank, seed; the 16-bit cell
runs as mask `none`): greedy token-match rate, embedding cosine, EM/F1 difference, and per layer the cosine, L2 and
relative difference of ΔW = (α/r)·B·A; then r*, the smallest rank whose mean similarity stays ≥ 0.95.

Reads stored outputs only (generations.parquet, adapter.safetensors, row.parquet) — no model, no torch.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import polars as pl

from qlbench.study import grid
from qlbench.study.grid import ADAPTER, GENERATIONS, ROW, Cell
from qlbench.study.config import Study

THRESHOLD = 0.95
PAIR_KEYS = ["study", "model", "n_train", "targets", "bits", "rank", "mask", "seed"]
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as float arrays, without torch (bf16 widened to float32, which numpy lacks)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        buf = raw[base + lo : base + hi]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def delta_w(adapter: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """module -> ΔW = scale · B @ A (out × in), in float64."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in adapter.items():
        m = _LORA_KEY.match(key)
        if m:
            parts.setdefault(m["module"], {})[m["ab"]] = value
    return {mod: scale * (ab["B"].astype(np.float64) @ ab["A"].astype(np.float64))
            for mod, ab in sorted(parts.items()) if "A" in ab and "B" in ab}


def layer_similarity(dw: dict[str, np.ndarray], dw_ref: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for mod in sorted(set(dw) & set(dw_ref)):
        a, b = dw[mod].ravel(), dw_ref[mod].ravel()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        l2 = float(np.linalg.norm(a - b))
        rows.append({"module": mod, "dw_cos": float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan"),
                     "dw_l2": l2, "dw_rel": l2 / nb if nb > 0 else float("nan"),
                     "dw_norm": float(na), "dw_norm_ref": float(nb)})
    return rows


def token_match(ids: list[int], ref: list[int]) -> float:
    """Positions where both greedy outputs agree, over the longer output's length (1.0 when both are empty)."""
    n = max(len(ids), len(ref))
    if n == 0:
        return 1.0
    return sum(a == b for a, b in zip(ids, ref)) / n


def cosine(u, v) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else float("nan")


def output_similarity(gen: pl.DataFrame, ref: pl.DataFrame) -> dict:
    """Per-probe agreement of two cells' generations, averaged over the probes both answered."""
    joined = gen.select("probe", "output_ids", "hidden_mean", "em", "f1").join(
        ref.select("probe", "output_ids", "hidden_mean", "em", "f1"), on="probe", suffix="_ref")
    tm, same, emb = [], [], []
    for r in joined.iter_rows(named=True):
        tm.append(token_match(r["output_ids"], r["output_ids_ref"]))
        same.append(float(list(r["output_ids"]) == list(r["output_ids_ref"])))
        emb.append(cosine(r["hidden_mean"], r["hidden_mean_ref"]))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    em = joined["em"].drop_nulls()
    return {
        "probes": joined.height,
        "token_match": mean(tm),
        "output_match": mean(same),
        "embed_cos": mean(emb),
        "em_delta": float(joined["em"].mean() - joined["em_ref"].mean()) * 100 if em.len() else float("nan"),
        "f1_delta": float(joined["f1"].mean() - joined["f1_ref"].mean()) * 100 if em.len() else float("nan"),
    }


def reference_of(cell: Cell) -> Cell:
    return Cell(cell.model, 16, cell.rank, "none", cell.seed, cell.n_train, cell.targets)


def _scale(row: pl.DataFrame, rank: int) -> float:
    return float(row["lora_alpha"][0]) / rank if "lora_alpha" in row.columns else 1.0


def pairs(study: Study, results: str) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(one row per quantized cell, one row per cell × LoRA module, cells skipped for lack of outputs)."""
    cells = grid.cells(study)
    in_grid = set(cells)
    pair_rows, layer_rows, skipped = [], [], []
    for cell in cells:
        ref = reference_of(cell)
        if cell.bits == 16 or ref not in in_grid:
            continue
        d, d_ref = Path(grid.cell_dir(results, study.name, cell)), Path(grid.cell_dir(results, study.name, ref))
        if not all((x / f).exists() for x in (d, d_ref) for f in (GENERATIONS, ADAPTER, ROW)):
            skipped.append(cell.path)
            continue
        coords = {"study": study.name, **cell.coords(), "targets": cell.targets}  # null unless an axis
        row, row_ref = pl.read_parquet(d / ROW), pl.read_parquet(d_ref / ROW)
        layers = layer_similarity(delta_w(read_safetensors(d / ADAPTER), _scale(row, cell.rank)),
                                  delta_w(read_safetensors(d_ref / ADAPTER), _scale(row_ref, ref.rank)))
        layer_rows += [{**coords, **lr} for lr in layers]
        cos = [lr["dw_cos"] for lr in layers]
        rel = [lr["dw_rel"] for lr in layers]
        pair_rows.append({
            **coords,
            **output_similarity(pl.read_parquet(d / GENERATIONS), pl.read_parquet(d_ref / GENERATIONS)),
            "dw_cos_mean": float(np.mean(cos)) if cos else float("nan"),
            "dw_cos_min": float(np.min(cos)) if cos else float("nan"),
            "dw_rel_mean": float(np.mean(rel)) if rel else float("nan"),
            "eval_loss_delta": float(row["eval_loss"][0] - row_ref["eval_loss"][0]),
        })
    return _frame(pair_rows), _frame(layer_rows), skipped


def _frame(rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema={k: (pl.Int64 if k in ("n_train", "bits", "rank", "seed") else pl.String)
                                    for k in PAIR_KEYS})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("n_train").cast(pl.Int64),
                                                                     pl.col("targets").cast(pl.String))


def first_passing_for_good(ranks: list[int], sims: list, threshold: float) -> int | None:
    """The smallest scanned rank from which every higher scanned rank passes (similarity ≥ threshold); None when
    the highest fails. A rank that passes below one that fails again is no r*."""
    passing = [s is not None and s == s and s >= threshold for s in sims]
    found = None
    for r, ok in sorted(zip(ranks, passing), reverse=True):
        if not ok:
            break
        found = r
    return found


def r_star(pair_frame: pl.DataFrame, metrics=("dw_cos_mean", "token_match", "embed_cos"),
           threshold: float = THRESHOLD) -> pl.DataFrame:
    """Per (model, n_train, targets, bits, mask) and metric: r*, the smallest rank from which every higher scanned
    rank's seed-mean similarity is ≥ threshold (null when the highest rank misses it), with the mean similarity at
    each rank."""
    schema = {"model": pl.String, "n_train": pl.Int64, "targets": pl.String, "bits": pl.Int64, "mask": pl.String,
              "metric": pl.String,
              "threshold": pl.Float64, "r_star": pl.Int64, "ranks": pl.List(pl.Int64),
              "similarity": pl.List(pl.Float64)}
    if pair_frame.is_empty():
        return pl.DataFrame(schema=schema)
    group = ["model", "n_train", "targets", "bits", "mask"]
    rows = []
    for metric in metrics:
        if metric not in pair_frame.columns:
            continue
        by_rank = (pair_frame.group_by([*group, "rank"]).agg(pl.col(metric).mean().alias("sim"))
                   .sort([*group, "rank"], nulls_last=True))
        for key, g in by_rank.group_by(group, maintain_order=True):
            ranks, sims = g["rank"].to_list(), g["sim"].to_list()
            rows.append({**dict(zip(group, key)), "metric": metric, "threshold": threshold,
                         "r_star": first_passing_for_good(ranks, sims, threshold), "ranks": ranks, "similarity": sims})
    return pl.DataFrame(rows, schema=schema)
