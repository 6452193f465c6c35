"""The analysis commands' bodies: read cells.parquet, write tables and figures into one folder (no model, no torch)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.results import write_parquet

BSTAR_RANKS = [2, 4, 8, 16, 32, 64]


def run_bounds(cells_parquet: Path, out: Path, tolerance: float, noise: pl.DataFrame | None = None) -> str:
    """Fits, verdicts, b*, gradient-variance slopes, the gap view and the nine-panel figure; `noise` (the noise
    check on qlbench's quantizers, computed by the caller: analysis never quantizes) is written and drawn."""
    from qlbench.analysis import bounds, claims, power
    from qlbench.analysis.figures_bounds import bounds_figure, gap_figure, noise_figure

    cells = pl.read_parquet(cells_parquet)
    models = sorted(cells["model"].unique().to_list())
    if len(models) > 1:  # L* is a property of the base: one fit per base model, the first one here
        cells = cells.filter(pl.col("model") == models[0])
    pts = bounds.points(cells)
    if pts.height < 4 or pts.filter(pl.col("bits") < 16).is_empty():
        raise ValueError("the bound needs at least 4 (rank, bits, N) points of mask `all`, some quantized")
    fits = bounds.fit(pts, bounds.fit_cells(cells))
    best = bounds.supported(fits)
    gaps = bounds.gaps(cells)
    exps = claims.exponents(pts)
    grad = claims.grad_var_scaling(cells)
    g_rel = ({r: v for r, v in zip(pts["rank"], pts["grad_var_rel"]) if v is not None}
             if "grad_var_rel" in pts.columns else None)
    examples = sorted(pts["train_examples"].unique().to_list())
    bstar = bounds.b_star(best, BSTAR_RANKS, examples, tolerance, grad_var_rel=g_rel)
    table = bounds.rank_precision(gaps, tolerance) if gaps.height else bounds.rank_precision(gaps.clear(), tolerance)
    powers = power.claim_powers(pts, grad)
    verdicts = claims.verdicts(pts, fits, grad, table, powers)
    out.mkdir(parents=True, exist_ok=True)
    study = cells["study"][0]
    for name, frame in (("points", pts), ("gaps", gaps), ("fits", fits), ("bstar", bstar), ("exponents", exps),
                        ("grad_var_scaling", grad), ("rank_precision", table), ("verdicts", verdicts)):
        write_parquet(frame, out / f"{name}.parquet")
    fit_view = fits_view(fits)
    best_note = f"Supported form: {best['form']}: {bounds.verdict_on_form(best['form'])}."
    _tables(out, "fits", fit_view, f"{study}: L(r, b, N) fitted over {pts.height} points (weighted by seed "
            "uncertainty; 95% CIs by bootstrap over seeds)", best_note)
    _tables(out, "verdicts", verdict_view(verdicts), f"{study}: the bounds paper's claims, tested, each with its "
            f"power (level {claims.POWER_LEVEL}) against its rival", VERDICT_NOTE)
    _tables(out, "bstar", bstar, f"{study}: b*(r, N) from the supported form `{best['form']}` "
            f"({bounds.verdict_on_form(best['form'])})")
    if noise is not None and noise.height:
        write_parquet(noise, out / "noise_check.parquet")
        _tables(out, "noise_check", noise.drop("numel"), f"{study}: quantization error variance against Δ²/12")
        noise_figure(noise, out / "noise_check.png", f"{study}: uniform noise model on qlbench's quantizers")
    bounds_figure(cells, pts, fits, bstar, grad, verdicts, out / "bounds.png", f"{study}: quantization bound")
    gap_figure(gaps, best, out / "gaps.png", f"{study}: gap to 16 bits")
    return (("" if len(models) == 1 else f"{models[0]} (of {len(models)} models): ") + f"{pts.height} points; supported form {best['form']} (R² {best['r2']:.3f}, LOO RMSE "
            f"{best['loo_rmse']:.4f}); " + "; ".join(f"{v['claim'].split(':')[0]}: {v['verdict']}"
                                                    for v in verdicts.iter_rows(named=True)))


VERDICT_NOTE = ("power: the smaller of the chances that the test decides correctly when the claim is true and "
                "when the rival is, by a parametric bootstrap on this grid and its seed noise (the claim and the rival "
                "planted at the fitted nuisance values, refitted); below the level, or with an interval at the edge "
                "of the search range, the verdict is *undecided (grid)*: `qlbench plan` lists the cells that would "
                "decide it.")


def fits_view(fits: pl.DataFrame) -> pl.DataFrame:
    """The fits table as printed: each coefficient as "estimate [lo, hi]", or "0 (at bound), ≤ hi" (one-sided)."""
    def coef(row, c):
        if row.get(c) is None:
            return "–"
        if row.get(f"{c}_at_bound"):
            hi = row.get(f"{c}_hi")
            return "0 (at bound)" + ("" if hi is None or hi != hi else f", one-sided 95% ≤ {hi:.3g}")
        lo, hi = row.get(f"{c}_lo"), row.get(f"{c}_hi")
        return f"{row[c]:.4g}" + ("" if lo is None or lo != lo else f" [{lo:.3g}, {hi:.3g}]")

    rows = []
    for row in fits.iter_rows(named=True):
        view = {"form": row["form"], **{c: coef(row, c) for c in ("L_star", "c1", "a", "c2") if c in row}}
        view["exponents"] = (f"κ {row['kappa']:.2f}, ρ {row['rho']:.2f}, β {row['beta']:.2f}"
                             if row.get("kappa") is not None else "κ 2, ρ 1" if row["form"] != "no_bit_term" else "–")
        view |= {k: row[k] for k in ("params", "r2", "loo_rmse", "aicc", "delta_aicc", "supported")}
        rows.append(view)
    return pl.DataFrame(rows)


def verdict_view(verdicts: pl.DataFrame) -> pl.DataFrame:
    """The verdict table as printed: numbers to 3 significant figures, the interval as one string."""
    def num(x):
        return "–" if x is None or x != x else f"{x:.3g}"

    rows = []
    for v in verdicts.iter_rows(named=True):
        ci = "–" if v["ci_lo"] != v["ci_lo"] else f"[{num(v['ci_lo'])}, {num(v['ci_hi'])}]"
        rows.append({"claim": v["claim"], "measured": num(v["measured"]), "95% CI": ci,
                     "predicted": num(v["predicted"]), "rival": num(v["rival"]), "power": num(v["power"]),
                     "verdict": v["verdict"], "evidence": v["evidence"]})
    return pl.DataFrame(rows)


def run_sensitivity(cells_parquet: Path, out: Path, budget: float, budget_bits: float | None = None) -> str:
    from qlbench.analysis import sensitivity
    from qlbench.analysis.figures import sensitivity_figure

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


def _tables(out: Path, name: str, table: pl.DataFrame, title: str, note: str = "") -> None:
    """NAME.md (README, terminal) and NAME.html (the Snakemake report shows it as a table)."""
    from qlbench.analysis.tables import html, markdown

    (out / f"{name}.md").write_text(markdown(table, title) + (f"\n{note}\n" if note else ""))
    (out / f"{name}.html").write_text(html(table, title, note))


def run_summary(cells_parquet: Path, table_path: Path, csv_path: Path, figure_path: Path,
                efficiency_path: Path | None) -> str:
    from qlbench.analysis import summary
    from qlbench.analysis.figures import eval_loss_vs_bits
    from qlbench.results import atomic_path

    cells = pl.read_parquet(cells_parquet)
    study = cells["study"][0]
    table = summary.by_config(cells)
    from qlbench.analysis.tables import html

    title = f"{study}: eval loss after LoRA (mean and sd over seeds)"
    with atomic_path(table_path) as tmp:
        tmp.write_text(summary.markdown(table, title))
    with atomic_path(table_path.with_suffix(".html")) as tmp:
        tmp.write_text(html(table, title))
    with atomic_path(csv_path) as tmp:
        table.write_csv(tmp)
    with atomic_path(figure_path) as tmp:
        eval_loss_vs_bits(table, tmp.with_suffix(".png"), f"{study}: eval loss against bits")
        tmp.with_suffix(".png").replace(tmp)
    if efficiency_path:
        from qlbench.analysis import efficiency

        cost = efficiency.table(cells)
        with atomic_path(efficiency_path) as tmp:
            tmp.write_text(summary.markdown(cost, f"{study}: cost per configuration"))
        with atomic_path(efficiency_path.with_suffix(".html")) as tmp:
            tmp.write_text(html(cost, f"{study}: cost per configuration"))
    return f"{study}: {table.height} configurations -> {table_path}"


def run_validation(cells_parquet: Path, recommendation_parquet: Path, rows: list[Path], out: Path) -> str:
    from qlbench.analysis.sensitivity import validate

    extra = pl.concat([pl.read_parquet(r) for r in rows], how="diagonal_relaxed") if rows else pl.DataFrame()
    table = validate(pl.read_parquet(cells_parquet), pl.read_parquet(recommendation_parquet), extra)
    write_parquet(table, out)
    _tables(out.parent, out.stem, table, f"{table['model'][0] if table.height else ''}: the recommendation, run: "
            "predicted against measured degradation")
    def measured(r):
        return "not run" if r["measured_degradation"] is None else f"{r['measured_degradation']:+.4f}"

    return "\n".join(f"{r['model']} r={r['rank']} {r['bits']} bits, {r['mask']}: predicted "
                     f"{r['predicted_degradation']:+.4f}, measured {measured(r)}"
                     for r in table.iter_rows(named=True))


def run_qlora_figure(study_dir: Path, out: Path) -> str:
    from qlbench.analysis.figures import qlora_figure

    read = lambda name: pl.read_parquet(study_dir / name) if (study_dir / name).exists() else pl.DataFrame()
    cells, pairs, layers, rstar = (read(n) for n in ("cells.parquet", "similarity.parquet",
                                                     "similarity_layers.parquet", "rstar.parquet"))
    out.parent.mkdir(parents=True, exist_ok=True)
    qlora_figure(cells, pairs, layers, rstar, out, f"{study_dir.name}: LoRA against QLoRA")
    found = "; ".join(f"{r['metric']} at {r['bits']} bits: r* = {r['r_star']}" for r in rstar.iter_rows(named=True))
    return f"{study_dir.name}: {pairs.height} pairs -> {out}" + (f"; {found}" if found else "")


def run_plan(st, root: Path, level: float, replicates: int, out: Path | None) -> str:
    """`qlbench plan`: the plan table from the study's cells (or its config's grid and a nominal law)."""
    from qlbench.analysis import bounds, plan

    cells_path = root / st.name / "cells.parquet"
    cells = pl.read_parquet(cells_path) if cells_path.exists() else None
    pts = None
    if cells is not None:
        cells = cells.filter(pl.col("model") == sorted(cells["model"].unique().to_list())[0])
        pts = bounds.points(cells)
        if pts.height < 4 or pts.filter(pl.col("bits") < 16).is_empty() or pts.filter(pl.col("bits") >= 16).is_empty():
            pts = None
    nominal = pts is None
    if nominal:
        masks = {m for ms in st.masks.values() for m in ms}
        if 16 not in st.bits or not [b for b in st.bits if b < 16] or "all" not in masks:
            raise ValueError(f"{st.name} has no bounds grid (it needs 16-bit cells and quantized cells of mask `all`)")
        examples = sorted({n or 1000 for n in st.n_train})
        pts = plan.nominal_points(st.bits, st.ranks, examples, len(st.seeds))
    table = plan.plan(pts, cells, level, replicates)
    timed = bool(plan.cell_seconds(cells))
    text = plan.markdown(table, st.name, level, nominal, timed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(table, out / "plan.parquet")
        (out / "plan.md").write_text(text)
        from qlbench.analysis.tables import html

        (out / "plan.html").write_text(html(table, f"{st.name}: the cells that would decide each bounds claim",
                                            text.split("\n\n")[-1] if "\n\n" in text else ""))
    return text
