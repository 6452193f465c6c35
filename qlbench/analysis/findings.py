"""`qlbench findings STUDY`: every number the README states about a study, printed as Markdown from the study's
results folder — so anyone who reruns the study can regenerate the README's tables and see whether they hold.

Sections appear where the results hold what they need: eval loss by rank and bits (cells.parquet), the gap to 16
bits, LoRA-vs-quantized similarity (similarity.parquet), the bound fit and its verdicts (bounds/), the sensitivity
ranking, its agreement and stability, and the validated recommendation (sensitivity/), and the plan of cells that
would decide each undecided bounds claim (bounds/plan.md, `qlbench plan`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench import registry
from qlbench.analysis.tables import markdown


def _output(analysis: str, key: str) -> str:
    """Where an analysis writes one of its outputs, in results/STUDY, as its declaration says."""
    return registry.analyses()[analysis].outputs[key]


def findings(study_dir: Path) -> str:
    parts = []
    cells_path = study_dir / "cells.parquet"
    if not cells_path.exists():
        raise FileNotFoundError(f"{cells_path}: run the study first")
    cells = pl.read_parquet(cells_path)
    study = cells["study"][0]
    parts.append(eval_loss_table(cells, study))
    if (cells["bits"] == 16).any() and (cells["bits"] < 16).any():
        parts.append(gap_table(cells, study))
    if (study_dir / _output("similarity", "pairs")).exists():
        pairs = pl.read_parquet(study_dir / _output("similarity", "pairs"))
        if pairs.height:
            parts.append(similarity_table(pairs, study))
    for name in ("bounds/fits.md", "bounds/verdicts.md", _output("plan", "markdown")):
        if (study_dir / name).exists():
            parts.append((study_dir / name).read_text())
    if (study_dir / _output("sensitivity", "ranking")).exists():
        parts.append(sensitivity_tables(pl.read_parquet(study_dir / _output("sensitivity", "ranking")), study))
    if (study_dir / _output("validate_recommendation", "validation")).exists():
        validation = pl.read_parquet(study_dir / _output("validate_recommendation", "validation"))
        if validation.height:
            parts.append(markdown(validation.select(
                "rank", "bits", "mask", pl.col("predicted_degradation").round(4), pl.col("measured_degradation").round(4),
                "seeds"), f"{study}: the recommended mixed-precision masks, run as validation cells"))
    return "\n".join(parts)


def _varying(cells: pl.DataFrame) -> list[str]:
    """The coordinates that vary among the quantized cells (seeds and bits aside): a table's row keys."""
    quantized = cells.filter(pl.col("bits") < 16)
    return [k for k in ("targets", "n_train", "rank", "mask") if k in quantized.columns
            and quantized[k].n_unique() > 1] or ["rank"]


def _mean_sd(values: pl.Series) -> str:
    sd = values.std() if values.len() > 1 else None
    return f"{values.mean():.4f} ± {sd:.4f}" if sd is not None else f"{values.mean():.4f}"


def eval_loss_table(cells: pl.DataFrame, study: str) -> str:
    """Mean ± sd over seeds of the eval loss after LoRA, a row per rank (and mask...), a column per bit width; the
    16-bit cell (one per rank and seed, mask `none`) fills the 16-bit column of every row."""
    quantized = cells.filter(pl.col("bits") < 16)
    keys = _varying(cells)
    shared = [k for k in keys if k != "mask"]
    rows = []
    for key, group in quantized.sort(keys).group_by(keys, maintain_order=True):
        coords = dict(zip(keys, key))
        row = dict(coords)
        for b in sorted(cells["bits"].unique().to_list()):
            pool = cells if b == 16 else group
            at = pool.filter((pl.col("bits") == b) & pl.all_horizontal(
                [pl.col(k) == coords[k] for k in shared] or [pl.lit(True)]))["eval_loss"]
            row[f"{b} bits"] = _mean_sd(at) if at.len() else "–"
        rows.append(row)
    return markdown(pl.DataFrame(rows), f"{study}: eval loss after LoRA (mean ± sd over seeds)")


def gap_table(cells: pl.DataFrame, study: str) -> str:
    """The eval-loss gap to the 16-bit cell of the same rank and seed, averaged over seeds, per bits (and rank,
    mask... where they vary)."""
    keys = [k for k in ("model", "n_train", "targets", "rank", "seed") if k in cells.columns]
    group = _varying(cells)
    ref = cells.filter(pl.col("bits") == 16).select(*keys, pl.col("eval_loss").alias("ref"))
    gaps = (cells.filter(pl.col("bits") < 16).join(ref, on=keys, how="inner", nulls_equal=True)
            .with_columns((pl.col("eval_loss") - pl.col("ref")).alias("gap"))
            .group_by(*group, "bits").agg(pl.col("gap").mean().round(4).alias("gap to 16 bits (nats)"),
                                          (pl.col("eval_loss").exp() / pl.col("ref").exp()).mean().round(3)
                                          .alias("perplexity ratio"))
            .sort(*group, "bits", descending=[False] * len(group) + [True]))
    return markdown(gaps, f"{study}: cost of quantization against the 16-bit cell (mean over seeds)")


def similarity_table(pairs: pl.DataFrame, study: str) -> str:
    group = _varying(pairs)
    table = (pairs.group_by(*group, "bits")
             .agg(pl.col("dw_cos_mean").mean().round(4).alias("ΔW cosine"),
                  (100 * pl.col("token_match").mean()).round(1).alias("token match %"),
                  pl.col("embed_cos").mean().round(4).alias("embedding cosine"))
             .sort(*group, "bits", descending=[False] * len(group) + [True]))
    return markdown(table, f"{study}: quantized cells against their 16-bit reference (mean over seeds)")


def sensitivity_tables(ranked: pl.DataFrame, study: str) -> str:
    out = []
    for level, group in ranked.group_by("level", maintain_order=True):
        cols = ["mask", pl.col("degradation").round(4), pl.col("ci95").round(4), "rank_measured"]
        cols += [c for c in ("rank_estimated",) if c in group.columns]
        out.append(markdown(group.sort("rank_measured").select(cols),
                            f"{study}: one {level[0]} at low bits, the rest at high bits (Δ eval loss, 95% CI)"))
        stable = group["rank_stability"][0]
        parts = [_agreement(group, prefix, what) for prefix, what in
                 (("estimate", "empirical Fisher × noise"), ("hessian", "Hutchinson Hessian trace × noise"))]
        parts = [p for p in parts if p] or ["one-pass estimate: –"]
        out.append(f"{level[0]}s ({group.height}): " + "; ".join(parts) + "; ranking stability across seeds "
                   f"{'–' if stable is None else f'{stable:.2f}'}\n")
    return "\n".join(out)


def _agreement(group: pl.DataFrame, prefix: str, what: str) -> str:
    """"<what> vs measured ranking: Spearman ρ (one-sided permutation p, 95% CI)", or "" without it."""
    if f"{prefix}_spearman" not in group.columns or group[f"{prefix}_spearman"][0] is None:
        return ""
    row = group.row(0, named=True)
    fmt = lambda v: "–" if v is None or v != v else f"{v:.2f}"
    p = row.get(f"{prefix}_p")
    return (f"{what} vs measured ranking, Spearman {fmt(row[f'{prefix}_spearman'])} (null probability "
            f"{'–' if p is None or p != p else f'{p:.3g}'}, 95% CI [{fmt(row.get(f'{prefix}_ci_lo'))}, "
            f"{fmt(row.get(f'{prefix}_ci_hi'))}])")
