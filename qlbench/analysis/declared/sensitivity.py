"""Layer-wise sensitivity (qlbench/analysis/sensitivity.py): blocks and modules ranked by what they cost at low
bits, and a mixed-precision recommendation under a budget. A checkpoint: its recommendation names the validation
cells (validate_recommendation)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis
from qlbench.results import write_parquet

ANALYSIS = Analysis(
    name="sensitivity",
    summary="blocks and modules ranked by their cost at low bits, and a mixed-precision recommendation",
    needs=["cells", "probes"],
    applies="sensitivity",
    checkpoint=True,
    outputs={
        "ranking": "sensitivity/ranking.parquet",
        "recommendation": "sensitivity/recommendation.parquet",
        "figure": "sensitivity/sensitivity.png",
        "ranking_table": "sensitivity/ranking.html",
        "recommendation_table": "sensitivity/recommendation.html",
    },
    report={
        "figure": (
            "Sensitivity",
            "",
            "Eval-loss degradation when a single block (or module) is quantized to low bits and the rest stays at the"
            " study's high_bits, against the reference with nothing at low bits; mean and 95% confidence interval "
            "over seeds, most sensitive first, with the mean pairwise Spearman correlation of the ranking across "
            "seeds."
        ),
        "ranking_table": (
            "Sensitivity",
            "Tables",
            "Per block and module: degradation at low bits (mean over seeds, 95% t-interval), measured rank, rank "
            "stability across seeds (mean pairwise Spearman), the one-pass estimate ½·Σ F·δ² and its Spearman "
            "agreement with the measured ranking."
        ),
        "recommendation_table": (
            "Sensitivity",
            "Tables",
            "The recommended mixed precision: a bit width per block (or module) from the widths scanned, minimising "
            "the summed measured degradation with the parameter-weighted average bits per weight within the budget — "
            "an exact integer program solved by CBC — or, without module sizes, the least sensitive half by count. "
            "The budget is halfway between the lowest scanned width and high_bits."
        ),
    },
)

FRACTION = 0.5  # without module sizes: this fraction of the blocks/modules (by count) to low bits


def budget_bits(study) -> float | None:
    """With module sizes (probe_bits > 0), an average of bits per weight halfway between the lowest scanned width
    and high_bits (6 for 4-bit modules in an 8-bit model), solved as an integer program; without them, None (half
    the blocks/modules by count)."""
    high = study.tree.quant.high_bits
    low = [b for b in study.bits if b < high]
    return (min(low) + high) / 2 if study.tree.eval.probe_bits and low else None


def run(job) -> str:
    bits = float(job.options["budget_bits"]) if "budget_bits" in job.options else budget_bits(job.study)
    return run_sensitivity(job.inputs["cells"], job.outputs["ranking"].parent, job.option("budget", FRACTION), bits)


def run_sensitivity(cells_parquet: Path, out: Path, budget: float, budget_bits: float | None = None) -> str:
    from qlbench.analysis import sensitivity
    from qlbench.analysis.figures import sensitivity_figure
    from qlbench.analysis.tables import write as _tables

    cells = pl.read_parquet(cells_parquet)
    metric = sensitivity.task_metric(cells)
    ranked = sensitivity.ranking(cells, metric).with_columns(pl.lit(metric).alias("metric"))
    if ranked.is_empty():
        raise ValueError("no single-block or single-module masks with a reference cell to rank")
    probes_path = cells_parquet.with_name("probes.parquet")
    probes = pl.read_parquet(probes_path) if probes_path.exists() else pl.DataFrame()
    if not probes.is_empty():
        ranked = sensitivity.with_estimates(ranked, probes)
    if budget_bits is not None:
        high = int(cells.filter(pl.col("bits") < 16)["high_bits"].mode()[0]) if "high_bits" in cells.columns else 16
        rec = sensitivity.recommend_bits(ranked, sensitivity.sizes(probes), budget_bits, high)
    else:
        rec = sensitivity.recommend(ranked, budget)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(ranked, out / "ranking.parquet")
    write_parquet(rec, out / "recommendation.parquet")
    study = cells["study"][0]
    _tables(out, "ranking", ranked, f"{study}: sensitivity per block / module")
    _tables(out, "recommendation", rec, f"{study}: recommended mixed precision")
    sensitivity_figure(ranked, out / "sensitivity.png", f"{study}: layer sensitivity")
    top = ranked.sort("degradation", descending=True).row(0, named=True)
    agree = (f"; one-pass estimate agrees with Spearman {top['estimate_spearman']:.2f} (null probability "
             f"{top['estimate_p']:.3g})" if "estimate_spearman" in ranked.columns and top["estimate_spearman"] is not None
             else "")
    budget_line = "".join(f"\n{r['level']}: {r['mask']} at {r['bits']} bits, {r.get('avg_bits', 0) or 0:.2f} bits "
                          f"per weight, predicted {r['predicted_degradation']:+.4f}"
                          for r in rec.iter_rows(named=True)) if budget_bits is not None else ""
    return f"{ranked.height} masks ranked by {metric}; most sensitive: {top['mask']} ({top['degradation']:+.4f}){agree}{budget_line}"


