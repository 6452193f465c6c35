"""The seed-paired verdicts of a study's cells, each with its per-seed differences: what `qlbench plan` plans seeds for.

- `paired_gap`: QaLoF's gaps (qlbench.analysis.qalof_gaps.GAPS, per metric) and the robustness table's gains
  (each precision against fp32, per metric), B − A on the same seeds.
- `sensitivity`: two masks next to each other in the measured ranking (rank k against k+1: their degradations'
  difference per seed), and the top-k set (the k-th against the (k+1)-th, k = the recommendation's low-bit count).
- `recommendation`: the recommendation's predicted degradation (the summed degradation of the masks it sends to
  low bits, per seed) against 0.
- `backend`: two backends (or formats) at one width and rank, eval loss, same seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def _gap_row(kind: str, verdict: str, x: np.ndarray, named: str) -> dict:
    return {"kind": kind, "verdict": verdict, "x": np.asarray(x, float), "named": named}


def qalof_gaps(cells: pl.DataFrame) -> list[dict]:
    from qlbench.analysis import qalof, qalof_gaps

    if "settings_json" not in cells.columns or not {"em", "f1"} <= set(cells.columns) or "task" not in cells.columns \
            or set(cells["task"].drop_nulls().unique().to_list()) != {"extractive_qa"}:
        return []  # QaLoF's gaps are EM/F1 of extractive QA
    per_seed = qalof.configurations(cells)
    out = []
    for question, a, b in qalof_gaps.GAPS:
        pa = per_seed.filter(pl.col("configuration") == a).drop("configuration")
        pb = per_seed.filter(pl.col("configuration") == b).drop("configuration")
        paired = pb.join(pa, on=qalof_gaps.KEYS, suffix="_a")
        for (model, rank, schedule), g in paired.group_by(["model", "rank", "schedule"], maintain_order=True):
            for m in qalof.METRICS:
                x = (g[m] - g[f"{m}_a"]).to_numpy()
                out.append(_gap_row("paired_gap", f"QaLoF {question} ({m}, {model}, r{rank}, {schedule})", x,
                                    f"{a} and {b}"))
    return out


def robustness_gains(root: Path) -> list[dict]:
    """Each precision against fp32 of the robustness table, per seed (accuracy metrics of its per-seed rows)."""
    from qlbench.analysis import robustness

    try:
        rows = robustness.gather(root)
    except Exception:  # no robustness outputs under this study: nothing to plan
        return []
    if rows is None or rows.is_empty() or "precision" not in rows.columns:
        return []
    metrics = [c for c in ("clean_accuracy", "adversarial_accuracy") if c in rows.columns]
    keys = [k for k in ("model", "rank", "attacked", "seed") if k in rows.columns]
    ref = rows.filter(pl.col("precision") == "fp32")
    out = []
    for prec in sorted(set(rows["precision"].unique().to_list()) - {"fp32"}):
        paired = rows.filter(pl.col("precision") == prec).join(ref, on=keys, suffix="_fp32")
        for m in metrics:
            x = (paired[m] - paired[f"{m}_fp32"]).drop_nulls().to_numpy()
            out.append(_gap_row("paired_gap", f"robustness {prec} vs fp32 ({m})", x, f"{prec} and fp32"))
    return out


def sensitivity(cells: pl.DataFrame, recommendation: pl.DataFrame | None = None) -> list[dict]:
    """Adjacent ranks, the top-k set, and the recommendation's predicted degradation, per seed."""
    from qlbench.analysis import sensitivity as sens
    from qlbench.analysis.pairs import with_reference

    metric = sens.task_metric(cells)
    sign = -1.0 if metric in sens.HIGHER_IS_BETTER else 1.0
    ranked = sens.ranking(cells, metric)
    if ranked.is_empty():
        return []
    paired = with_reference(cells, metric).filter(pl.col("mask") != "all").with_columns(
        (sign * pl.col(f"delta_{metric}")).alias("worse"))
    out = []
    group = [g for g in sens.GROUP if g in ranked.columns] + ["level"]
    for key, g in ranked.group_by(group, maintain_order=True):
        g = g.sort("rank_measured")
        masks = g["mask"].to_list()
        per = paired.filter(pl.col("mask").is_in(masks)).pivot(on="mask", index="seed", values="worse",
                                                               aggregate_function="mean").drop_nulls()
        if per.height < 1:
            continue
        where = ", ".join(f"{k}={v}" for k, v in zip(group, key) if k in ("rank", "bits", "level"))
        k_low = _low_count(recommendation, g.height)
        for i in range(len(masks) - 1):
            a, b = masks[i], masks[i + 1]
            if a not in per.columns or b not in per.columns:
                continue
            x = (per[a] - per[b]).to_numpy()
            out.append(_gap_row("sensitivity", f"rank {i + 1} ({a}) above rank {i + 2} ({b}) [{where}]", x,
                                f"{a} and {b}"))
            if i == len(masks) - k_low - 1:  # the boundary of the least sensitive k: the top-k set
                out.append(_gap_row("sensitivity", f"the {k_low} least sensitive set ({b} … ) [{where}]", x,
                                    f"{a} and {b}"))
        low = [m for m in masks[len(masks) - k_low:] if m in per.columns]
        if low:
            x = per.select(pl.sum_horizontal(low)).to_series().to_numpy()
            out.append(_gap_row("recommendation", f"predicted degradation of {'+'.join(low)} > 0 [{where}]", x,
                                "+".join(low)))
    return out


def _low_count(recommendation: pl.DataFrame | None, masks: int) -> int:
    if recommendation is not None and "low_bit_masks" in recommendation.columns and recommendation.height:
        return max(1, min(int(recommendation["low_bit_masks"][0]), masks - 1))
    return max(1, masks // 2)


def backends(cells: pl.DataFrame) -> list[dict]:
    """Every two backends (or formats) at one width and rank: eval loss, same seeds."""
    if "backend" not in cells.columns or "format" not in cells.columns:
        return []
    q = cells.filter(pl.col("bits") < 16).with_columns(
        pl.concat_str(pl.col("backend").fill_null("?"), pl.col("format").fill_null("?"), separator="/").alias("_bf"))
    out = []
    for (bits, rank), g in q.group_by(["bits", "rank"], maintain_order=True):
        kinds = sorted(g["_bf"].unique().to_list())
        per = g.pivot(on="_bf", index="seed", values="eval_loss", aggregate_function="mean").drop_nulls()
        for i, a in enumerate(kinds):
            for b in kinds[i + 1:]:
                out.append(_gap_row("backend", f"{b} vs {a} at {bits} bits, r{rank} (eval loss)",
                                    (per[b] - per[a]).to_numpy(), f"{a} and {b}"))
    return out


def collect(cells: pl.DataFrame, folder: Path) -> list[dict]:
    """Every seed-paired verdict the study's cells and outputs hold."""
    rec_path = folder / "sensitivity" / "recommendation.parquet"
    rec = pl.read_parquet(rec_path) if rec_path.exists() else None
    masks = set(cells["mask"].unique().to_list()) if "mask" in cells.columns else set()
    out = []
    if masks - {"all", "none"}:
        out += sensitivity(cells, rec)
    out += qalof_gaps(cells)
    out += robustness_gains(folder)
    out += backends(cells)
    return out
