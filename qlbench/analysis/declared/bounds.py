"""The bounds paper's analysis (qlbench/analysis/bounds.py, claims.py, power.py): L(r, b, N) and its rivals fitted
to every cell's eval loss, b*(r, N), a verdict per claim with its power, gradient-variance slopes, the gap view and
the noise check on qlbench's quantizers."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis
from qlbench.results import write_parquet

ANALYSIS = Analysis(
    name="bounds",
    summary="L(r, b, N) and its rivals fitted to the eval loss, b*(r, N), a verdict per claim, the noise check",
    needs=["cells", "noise_check"],
    applies="bounds",
    outputs={
        "fits": "bounds/fits.parquet",
        "verdicts": "bounds/verdicts.parquet",
        "bstar": "bounds/bstar.parquet",
        "noise": "bounds/noise_check.parquet",
        "figure": "bounds/bounds.png",
        "gaps": "bounds/gaps.png",
        "noise_figure": "bounds/noise_check.png",
        "fits_table": "bounds/fits.html",
        "verdicts_table": "bounds/verdicts.html",
        "bstar_table": "bounds/bstar.html",
    },
    report={
        "figure": (
            "Bounds",
            "",
            "The bounds paper's nine panels for this study. **A** eval loss against bits per rank and N (mean ± "
            "standard error over seeds), with the supported form's fit; **B** eval loss against rank; **C** gradient "
            "variance σ_g² against bits with the measured log-slopes and their 95% t-intervals (predicted +1 per "
            "doubling of r, −2 per bit); **D** fitted against measured eval loss with Pearson and Spearman "
            "correlations; **E** eval perplexity per cell by bits; **F** time per step (and peak memory) by bits; "
            "**G** b*(r, N) from the supported form: within the tolerance ε, and keeping the quantization term below "
            "c1·√(r/N); **H** the two terms of the bound per (rank, bits); **I** the verdict per claim. The fit is "
            "L(r, b, N) = L* + c1·√(r/N) + c2·r·2^(−2b) over every cell of mask `all` and every 16-bit cell, weighted"
            " by the inverse variance of each seed mean, against rivals without rank coupling, without a bit term and"
            " without √(r/N); a panel the grid cannot fill says so."
        ),
        "gaps": (
            "Bounds",
            "",
            "The gap view: eval-loss gap of each quantized cell to the 16-bit cell of the same rank, N and seed (mean"
            " ± sd over seeds), log scale, with the supported form's quantization term. On a gap the √(r/N) term "
            "cancels, which is why the fit itself is made on eval loss over all cells."
        ),
        "noise_figure": (
            "Bounds",
            "",
            "The uniform noise model on qlbench's own quantizers: measured error variance E[(Q(w) − w)²] of the "
            "trained adapters of the 16-bit cells (a Gaussian tensor when there are none), quantized by adapter "
            "rounding (per matrix), symmetric int (per row) and NF (per block of 64), over Δ²/12 with Δ the step each"
            " quantizer really uses (left; green: within 0.8–1.25, the model holds) and over the paper's Δ = "
            "2^(1−b)·max|w| (right). The model breaks at 2–3 bits."
        ),
        "fits_table": (
            "Bounds",
            "Tables",
            "Each form fitted to eval loss: coefficients with 95% intervals (bootstrap over seeds, widened to a "
            "t-interval for the seed count), weighted R², leave-one-out RMSE (nats), AICc, ΔAICc and BIC; `supported`"
            " marks the form with the lowest AICc, or the simplest within 2 of it."
        ),
        "verdicts_table": (
            "Bounds",
            "Tables",
            "One row per claim of the bounds paper: the measured number with its 95% interval, the predicted one, the"
            " rival it was tested against and the power of that test on this grid (a parametric bootstrap: the claim "
            "and its rival planted at the fitted nuisance values and the measured seed noise, refitted). *supported*,"
            " *not supported*, *undecided (grid)* (power below the level, an interval at the edge of the search "
            "range, or one that holds both the claim and its rival: the plan table says which cells would decide it) "
            "or *not testable* (the grid lacks the axis), with the evidence used."
        ),
        "bstar_table": (
            "Bounds",
            "Tables",
            "b*(r, N), the fewest bits whose quantization term stays within the tolerance (nats), and within the "
            "√(r/N) term, from the supported form (not from the bound's form when the data reject it)."
        ),
    },
)

BSTAR_RANKS = [2, 4, 8, 16, 32, 64]
TOLERANCE = 0.01  # the eval-loss gap (nats) b* must stay within


def run(job) -> str:
    noise = job.inputs.get("noise_check")
    return run_bounds(job.inputs["cells"], job.outputs["fits"].parent, job.option("tolerance", TOLERANCE), noise)


def run_bounds(cells_parquet: Path, out: Path, tolerance: float, noise: pl.DataFrame | None = None) -> str:
    """Fits, verdicts, b*, gradient-variance slopes, the gap view and the nine-panel figure; `noise` (the noise
    check on qlbench's quantizers, computed by the caller: analysis never quantizes) is written and drawn."""
    from qlbench.analysis import bounds, claims, power
    from qlbench.analysis.figures_bounds import bounds_figure, gap_figure, noise_figure
    from qlbench.analysis.tables import write as _tables

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
                             if row.get("kappa") is not None else
                             f"γ {row['gamma']:.2f} (b^(−γ)), ρ {row['rho']:.2f}" if row.get("gamma") is not None else
                             "κ 2, ρ 1" if row["form"] != "no_bit_term" else "–")
        view |= {k: row[k] for k in ("params", "r2", "loo_rmse") if k in row}
        # the error predicting a width (a rank) the fit did not see: qlbench.analysis.heldout
        view |= {k: row.get(k, float("nan")) for k in ("heldout_width_rmse", "heldout_rank_rmse")}
        view |= {k: row[k] for k in ("aicc", "delta_aicc", "supported")}
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


