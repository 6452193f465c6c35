"""The quantization bound, fitted where it can be identified: L(r, b, N) = L* + c1·√(r/N) + c2·r·2^(−2b).

Fitted to the eval loss of every cell of mask `all` and every 16-bit cell (whose bit term is 0), not to the gap
to 16 bits: on a gap the √(r/N) term is the same for both cells of a pair and cancels, so c1 cannot be seen.

Fit space and weights: eval loss itself, by weighted non-negative least squares with weight nᵢ/sᵢ² per point
(rank, bits, N) — the inverse variance of its seed mean. A 2-bit point whose seeds disagree by 0.1 then counts
for what it is worth, and an 8-bit point known to 1e-4 is not drowned by it (ordinary least squares on gaps let
the 2-bit gaps decide everything). sᵢ² is floored at the median over points, so two seeds that agree by chance
do not get infinite weight; with one seed per point every weight is 1.

Rival forms: no rank coupling (c2·2^(−2b)), no bit term, no √(r/N) term, and where gradient variance was
measured the bound with σ_g² (c2·r·2^(−2b)·σ_g²/σ̄_g²). Per form: coefficients with 95% CIs (bootstrap over
seeds, widened to a t-interval for the seed count; over points when there is one seed), weighted R², leave-one-out RMSE (nats), AICc and BIC. The supported
form is the one with the lowest AICc, or the simplest within 2 of it. b*(r, N) comes from the supported form.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl

from qlbench.analysis.stats import t_quantile

REFERENCE_BITS = 16


def bit_term(b: np.ndarray) -> np.ndarray:
    """2^(−2b), and 0 for an unquantized (16-bit) cell."""
    b = np.asarray(b, dtype=float)
    return np.where(b >= REFERENCE_BITS, 0.0, 2.0 ** (-2 * b))


# name -> (coefficient names, design columns over rank r, bits b, examples N, relative gradient variance g)
FORMS = {
    "bound": (("L_star", "c1", "c2"), lambda r, b, n, g: [np.ones_like(r), np.sqrt(r / n), r * bit_term(b)]),
    "no_rank_coupling": (("L_star", "c1", "c2"), lambda r, b, n, g: [np.ones_like(r), np.sqrt(r / n), bit_term(b)]),
    "no_bit_term": (("L_star", "c1"), lambda r, b, n, g: [np.ones_like(r), np.sqrt(r / n)]),
    "no_sqrt_term": (("L_star", "c2"), lambda r, b, n, g: [np.ones_like(r), r * bit_term(b)]),
}
GRAD_VAR_FORM = ("bound_grad_var", (("L_star", "c1", "c2"),
                                    lambda r, b, n, g: [np.ones_like(r), np.sqrt(r / n), r * bit_term(b) * g]))
RANK_COUPLED = {"bound", "bound_grad_var", "no_sqrt_term"}  # forms whose bit term grows with r


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, exactly: the best unconstrained fit over every support set."""
    best, best_sse = np.zeros(x.shape[1]), float(np.sum(y**2))
    for k in range(1, x.shape[1] + 1):
        for support in itertools.combinations(range(x.shape[1]), k):
            coef, *_ = np.linalg.lstsq(x[:, support], y, rcond=None)
            if np.all(coef >= 0):
                sse = float(np.sum((x[:, support] @ coef - y) ** 2))
                if sse < best_sse - 1e-15:
                    best, best_sse = np.zeros(x.shape[1]), sse
                    best[list(support)] = coef
    return best


def fit_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells the bound is fitted to: finished, and either mask `all` or unquantized."""
    ok = cells.filter(pl.col("status") == "ok") if "status" in cells.columns else cells
    ok = ok.filter(pl.col("eval_loss").is_finite())
    return ok.filter((pl.col("mask") == "all") | (pl.col("bits") >= REFERENCE_BITS))


def _keys(cells: pl.DataFrame) -> list[str]:
    return [k for k in ("model", "n_train", "rank", "bits", "train_examples") if k in cells.columns]


def points(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, rank, bits, N): mean, sd and count over seeds, the weight nᵢ/max(sᵢ², median s²), and
    σ_g² of the 16-bit cell at that rank relative to its geometric mean over ranks (`grad_var_rel`)."""
    used = fit_cells(cells)
    keys = _keys(used)
    out = used.group_by(keys).agg(pl.col("eval_loss").mean().alias("loss"), pl.col("eval_loss").var().alias("var"),
                                  pl.len().alias("seeds")).sort(keys)
    floor = out["var"].drop_nulls().median() if out["var"].drop_nulls().len() else None
    if floor is None or not floor > 0:
        out = out.with_columns(pl.lit(1.0).alias("weight"))
    else:
        out = out.with_columns((pl.col("seeds") / pl.max_horizontal(pl.col("var").fill_null(floor), pl.lit(floor)))
                               .alias("weight"))
    if "grad_var_mean" in used.columns:
        ref = [k for k in keys if k != "bits"]
        # NaN where a cell did not measure it (and NaN > 0 is true in polars): finite and positive only
        gv = (used.filter((pl.col("bits") >= REFERENCE_BITS) & pl.col("grad_var_mean").is_finite()
                          & (pl.col("grad_var_mean") > 0))
              .group_by(ref).agg(pl.col("grad_var_mean").mean().alias("grad_var")))
        if gv.height:
            gv = gv.with_columns((pl.col("grad_var") / pl.col("grad_var").log().mean().exp()).alias("grad_var_rel"))
            out = out.join(gv.drop("grad_var"), on=ref, how="left", nulls_equal=True)
    return out


def point_arrays(pts: pl.DataFrame):
    r = pts["rank"].to_numpy().astype(float)
    b = pts["bits"].to_numpy().astype(float)
    n = pts["train_examples"].to_numpy().astype(float)
    g = pts["grad_var_rel"].to_numpy().astype(float) if "grad_var_rel" in pts.columns else np.ones_like(r)
    return r, b, n, g


def forms_for(pts: pl.DataFrame) -> dict:
    forms = dict(FORMS)
    if "grad_var_rel" in pts.columns and pts["grad_var_rel"].is_finite().fill_null(False).all():
        forms[GRAD_VAR_FORM[0]] = GRAD_VAR_FORM[1]
    return forms


def _wfit(x, y, w):
    sw = np.sqrt(w)
    return nnls(x * sw[:, None], y * sw)


def fit(pts: pl.DataFrame, seed_losses: pl.DataFrame | None = None, boots: int = 300, rng_seed: int = 0
        ) -> pl.DataFrame:
    """One row per rival form: coefficients with 95% bootstrap CIs, weighted R², LOO RMSE, AICc, BIC, and
    whether the data support it. `seed_losses` (the fitted cells, for the bootstrap over seeds) defaults to none:
    then the bootstrap resamples points."""
    r, b, n, g = point_arrays(pts)
    y, w = pts["loss"].to_numpy(), pts["weight"].to_numpy()
    boot_ys = _bootstrap_means(pts, seed_losses, boots, rng_seed)
    n_seeds = seed_losses["seed"].n_unique() if boot_ys is not None else 1
    rows = []
    for name, (coefs, design) in forms_for(pts).items():
        x = np.column_stack(design(r, b, n, g))
        c = _wfit(x, y, w)
        resid = y - x @ c
        wsse = float(np.sum(w * resid**2))
        ybar = float(np.sum(w * y) / np.sum(w))
        wsst = float(np.sum(w * (y - ybar) ** 2))
        npts, k = len(y), len(coefs)
        loo = [y[i] - x[i] @ _wfit(np.delete(x, i, 0), np.delete(y, i), np.delete(w, i)) for i in range(npts)]
        ll = npts * math.log(max(wsse, 1e-300) / npts)
        row = {"form": name, "points": npts, "params": k,
               "r2": 1 - wsse / wsst if wsst > 0 else float("nan"),
               "rmse": float(np.sqrt(np.mean(resid**2))),
               "loo_rmse": float(np.sqrt(np.mean(np.square(loo)))) if npts > k + 1 else float("nan"),
               "aicc": ll + 2 * k + (2 * k * (k + 1) / (npts - k - 1) if npts > k + 1 else float("inf")),
               "bic": ll + k * math.log(npts)}
        draws = np.array([_wfit(xb, yb, wb) for xb, yb, wb in _boot_designs(x, y, w, boot_ys, rng_seed)])
        for i, cname in enumerate(coefs):
            row[cname] = float(c[i])
            if boot_ys is not None:
                # few seeds: the bootstrap's sd of a seed mean is short by √((s−1)/s), and its spread is itself
                # estimated from s seeds, so the interval is estimate ± t(0.975, s−1)·sd·√(s/(s−1))
                se = float(np.std(draws[:, i])) * math.sqrt(n_seeds / (n_seeds - 1))
                t = t_quantile(0.975, n_seeds - 1)
                lo, hi = max(0.0, c[i] - t * se), c[i] + t * se
            else:
                lo, hi = np.percentile(draws[:, i], [2.5, 97.5])
            row[f"{cname}_lo"], row[f"{cname}_hi"] = float(lo), float(hi)
        row["ci_method"] = "bootstrap over seeds" if boot_ys is not None else "bootstrap over points"
        rows.append(row)
    table = pl.DataFrame(rows)
    best = table["aicc"].min()
    table = table.with_columns((pl.col("aicc") - best).alias("delta_aicc"))
    near = table.filter(pl.col("delta_aicc") <= 2).sort("params", "aicc")
    return table.with_columns((pl.col("form") == near["form"][0]).alias("supported"))


def _bootstrap_means(pts: pl.DataFrame, seed_losses: pl.DataFrame | None, boots: int, rng_seed: int):
    """Per bootstrap draw, each point's mean eval loss over a resample (with replacement) of the study's seeds —
    one draw of seeds for all points, so a seed's luck stays shared — and the weights re-estimated from the
    drawn seeds. None when fewer than 2 seeds."""
    if seed_losses is None or "seed" not in seed_losses.columns:
        return None
    used = fit_cells(seed_losses)
    seeds = sorted(used["seed"].unique().to_list())
    if len(seeds) < 2:
        return None
    keys = _keys(used)
    wide = used.pivot(on="seed", index=keys, values="eval_loss", aggregate_function="mean")
    wide = pts.select(keys).join(wide, on=keys, how="left", nulls_equal=True)
    values = wide.select([str(s) for s in seeds]).to_numpy().astype(float)  # points × seeds, NaN where missing
    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(boots):
        pick = rng.integers(0, len(seeds), len(seeds))
        m = np.nanmean(values[:, pick], axis=1)
        # the weights are estimated from the seeds too: re-estimated per draw, their noise enters the interval
        var = np.nan_to_num(np.nanvar(values[:, pick], axis=1, ddof=1), nan=0.0)
        floor = np.median(var)
        w = (np.sum(~np.isnan(values[:, pick]), axis=1) / np.maximum(var, floor) if floor > 0
             else np.ones(len(m)))
        out.append((np.where(np.isnan(m), np.nanmean(values, axis=1), m), w))
    return out


def _boot_designs(x, y, w, boot_ys, rng_seed):
    if boot_ys is not None:
        for yb, wb in boot_ys:
            yield x, yb, wb
        return
    rng = np.random.default_rng(rng_seed)
    for _ in range(300):
        i = rng.integers(0, len(y), len(y))
        yield x[i], y[i], w[i]


def supported(fits: pl.DataFrame) -> dict:
    return fits.filter(pl.col("supported")).row(0, named=True)


def verdict_on_form(form: str) -> str:
    """What choosing `form` says about the bound's own form, in one sentence."""
    return {"bound": "the bound's form is supported",
            "bound_grad_var": "the bound's form with σ_g² is supported",
            "no_sqrt_term": "the √(r/N) term is not supported by these data (whether the bit term grows with r: see the "
                            "verdicts, where ρ is fitted free)",
            "no_rank_coupling": "the bound's rank coupling is rejected: the bit term does not grow with r",
            "no_bit_term": "the bound's bit term is rejected: bits do not explain eval loss here"}[form]


def b_star(form: dict, ranks: list[int], examples: list[int], tolerance: float, relative: float = 1.0,
           grad_var_rel: dict | None = None) -> pl.DataFrame:
    """The fewest bits whose quantization term stays within `tolerance` nats (b_star), and within `relative` × the
    generalisation term c1·√(r/N) (b_star_vs_sqrt: the paper's rule, where N enters), from one fitted form.

    bound: c2·r·2^(−2b) ≤ ε  ->  b* = ½·log₂(c2·r/ε); vs √(r/N): b* = ½·log₂(c2·√(r·N)/(κ·c1)).
    no_rank_coupling: c2·2^(−2b) ≤ ε  ->  b* = ½·log₂(c2/ε), the same for every rank.
    A form without a bit term (or c2 = 0) needs no bits: b* = −inf, whole-bit b* = 2 (the fewest scanned).
    With σ_g² (bound_grad_var): c2·r·g(r) in place of c2·r, g = σ_g²(r) relative to its geometric mean."""
    rows = []
    c1, c2, name = form.get("c1") or 0.0, form.get("c2") or 0.0, form["form"]
    for r, n in itertools.product(ranks, examples):
        scale = {"bound": r, "no_sqrt_term": r, "no_rank_coupling": 1.0}.get(name, 0.0)
        if name == "bound_grad_var":
            scale = r * (grad_var_rel or {}).get(r, float("nan"))
        need = 0.5 * math.log2(c2 * scale / tolerance) if c2 > 0 and scale > 0 else float("-inf")
        vs_sqrt = (0.5 * math.log2(c2 * scale / (relative * c1 * math.sqrt(r / n)))
                   if c1 > 0 and c2 > 0 and scale > 0 else float("nan"))
        rows.append({"rank": r, "train_examples": n, "form": name, "tolerance": tolerance, "b_star_exact": need,
                     "b_star": max(2, math.ceil(need)) if math.isfinite(need) else 2,
                     "relative": relative, "b_star_vs_sqrt": vs_sqrt})
    return pl.DataFrame(rows)


def gaps(cells: pl.DataFrame) -> pl.DataFrame:
    """The gap view (a figure, not the fit): mean eval-loss gap to the 16-bit cell of the same seed per
    (model, rank, bits, N) over mask `all`, with its sd and seed count."""
    from qlbench.analysis.pairs import with_reference

    paired = with_reference(fit_cells(cells)).filter(pl.col("mask") == "all")
    keys = [k for k in _keys(paired) if k != "bits"] + ["bits"]
    return (paired.group_by(keys)
            .agg(pl.col("delta_eval_loss").mean().alias("gap"), pl.col("delta_eval_loss").std().alias("gap_sd"),
                 pl.len().alias("seeds"))
            .sort(keys))


def rank_precision(gap_table: pl.DataFrame, bstar: pl.DataFrame, tolerance: float) -> pl.DataFrame:
    """Per rank (and N): the fewest scanned bits whose measured gap is within `tolerance` beside the fewest
    scanned bits at or above the supported form's b*: the paper's rank -> precision table, tested."""
    rows = []
    scanned = sorted(gap_table["bits"].unique().to_list())
    for (r, n), g in gap_table.group_by(["rank", "train_examples"], maintain_order=True):
        within = sorted(g.filter(pl.col("gap") <= tolerance)["bits"].to_list())
        # the smallest width from which every wider scanned width is also within tolerance
        measured = next((b for b in scanned if all(x in within for x in scanned if x >= b)), None)
        pred = bstar.filter((pl.col("rank") == r) & (pl.col("train_examples") == n))
        need = pred["b_star_exact"][0] if pred.height else float("nan")
        predicted = next((b for b in scanned if b >= need), None) if need == need else None
        rows.append({"rank": r, "train_examples": n, "measured_bits": measured, "predicted_bits": predicted,
                     "agree": measured == predicted})
    return pl.DataFrame(rows, schema_overrides={"measured_bits": pl.Int64, "predicted_bits": pl.Int64})
