"""The analysis commands' bodies: read cells.parquet, write tables and figures into one folder (no model, no torch)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.results import write_parquet

BSTAR_RANKS = [2, 4, 8, 16, 32, 64]


def run_bounds(cells_parquet: Path, out: Path, tolerance: float) -> str:
    from qlbench.analysis import bounds
    from qlbench.analysis.figures import bounds_figure

    cells = pl.read_parquet(cells_parquet)
    gaps = bounds.gaps(cells)
    if gaps.height < 3:
        raise ValueError("the bound needs at least 3 (rank, bits) points with a 16-bit reference")
    fits = bounds.fit(gaps)
    c2 = fits.filter(pl.col("model") == "full")["c2"][0]
    noise = bounds.simulate_noise()
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(gaps, out / "gaps.parquet")
    write_parquet(fits, out / "fits.parquet")
    bstar = bounds.b_star(c2, BSTAR_RANKS, tolerance)
    write_parquet(bstar, out / "bstar.parquet")
    write_parquet(bounds.grad_var_scaling(cells), out / "grad_var_scaling.parquet")
    write_parquet(noise, out / "noise_simulation.parquet")
    bounds_figure(cells.filter(pl.col("mask").is_in(["all", "none"])), gaps, fits, bstar, noise, out / "bounds.png",
                  f"{cells['study'][0]}: quantization bound")
    best = fits.sort("rmse").row(0, named=True)
    return f"{gaps.height} points; best model {best['model']} (R² {best['r2']:.3f}, LOO RMSE {best['loo_rmse']:.4f})"


def run_sensitivity(cells_parquet: Path, out: Path, budget: float) -> str:
    from qlbench.analysis import sensitivity
    from qlbench.analysis.figures import sensitivity_figure

    cells = pl.read_parquet(cells_parquet)
    ranked = sensitivity.ranking(cells)
    if ranked.is_empty():
        raise ValueError("no single-block or single-module masks with a reference cell to rank")
    probes = cells_parquet.with_name("probes.parquet")
    if probes.exists():
        ranked = sensitivity.with_estimates(ranked, pl.read_parquet(probes))
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(ranked, out / "ranking.parquet")
    write_parquet(sensitivity.recommend(ranked, budget), out / "recommendation.parquet")
    sensitivity_figure(ranked, out / "sensitivity.png", f"{cells['study'][0]}: layer sensitivity")
    top = ranked.sort("degradation", descending=True).row(0, named=True)
    agree = f"; one-pass estimate agrees with Spearman {top['estimate_spearman']:.2f}" if "estimate_spearman" in ranked.columns else ""
    return f"{ranked.height} masks ranked; most sensitive: {top['mask']} ({top['degradation']:+.4f}){agree}"


def run_summary(cells_parquet: Path, table_path: Path, csv_path: Path, figure_path: Path,
                efficiency_path: Path | None) -> str:
    from qlbench.analysis import summary
    from qlbench.analysis.figures import eval_loss_vs_bits
    from qlbench.results import atomic_path

    cells = pl.read_parquet(cells_parquet)
    study = cells["study"][0]
    table = summary.by_config(cells)
    with atomic_path(table_path) as tmp:
        tmp.write_text(summary.markdown(table, f"{study}: eval loss after LoRA (mean and sd over seeds)"))
    with atomic_path(csv_path) as tmp:
        table.write_csv(tmp)
    with atomic_path(figure_path) as tmp:
        eval_loss_vs_bits(table, tmp.with_suffix(".png"), f"{study}: eval loss against bits")
        tmp.with_suffix(".png").replace(tmp)
    if efficiency_path:
        from qlbench.analysis import efficiency

        with atomic_path(efficiency_path) as tmp:
            tmp.write_text(summary.markdown(efficiency.table(cells), f"{study}: cost per configuration"))
    return f"{study}: {table.height} configurations -> {table_path}"


def run_validation(cells_parquet: Path, recommendation_parquet: Path, rows: list[Path], out: Path) -> str:
    from qlbench.analysis.sensitivity import validate

    extra = pl.concat([pl.read_parquet(r) for r in rows], how="diagonal_relaxed") if rows else pl.DataFrame()
    table = validate(pl.read_parquet(cells_parquet), pl.read_parquet(recommendation_parquet), extra)
    write_parquet(table, out)
    return "\n".join(f"{r['model']} r={r['rank']} {r['bits']} bits, {r['mask']}: predicted "
                     f"{r['predicted_degradation']:+.4f}, measured {r['measured_degradation']:+.4f}"
                     for r in table.iter_rows(named=True))
