"""The quantization bound, fitted to measured gaps: gap(r, b, N) = c0 + c1·√(r/N) + c2·r·2^(−2b).

With c ≥ 0 (bounded least squares), R², leave-one-out error, two simpler models to beat (no rank coupling of the
bit term; no bit term), the fitted precision rule b*(r, N), the scaling of gradient variance with r and b, and a
Monte-Carlo check of the uniform noise model on LoRA factors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl

from qlbench.analysis.pairs import with_reference

# name -> (column names, design-matrix builder over rank r, bits b, examples N)
MODELS = {
    "full": (("c0", "c1", "c2"), lambda r, b, n: [np.ones_like(r), np.sqrt(r / n), r * 2.0 ** (-2 * b)]),
    "no_rank_coupling": (("c0", "c1", "c2"), lambda r, b, n: [np.ones_like(r), np.sqrt(r / n), 2.0 ** (-2 * b)]),
    "no_bit_term": (("c0", "c1"), lambda r, b, n: [np.ones_like(r), np.sqrt(r / n)]),
}


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


def gaps(cells: pl.DataFrame) -> pl.DataFrame:
    """Mean eval-loss gap to the reference per (model, rank, bits, N), over seeds and masks `all`."""
    paired = with_reference(cells).filter(pl.col("mask") == "all")
    return (
        paired.group_by("model", "rank", "bits", "train_examples")
        .agg(pl.col("delta_eval_loss").mean().alias("gap"), pl.col("delta_eval_loss").std().alias("gap_sd"),
             pl.len().alias("seeds"))
        .sort("model", "rank", "bits")
    )


def fit(points: pl.DataFrame) -> pl.DataFrame:
    """One row per model: coefficients, R², leave-one-out RMSE."""
    r = points["rank"].to_numpy().astype(float)
    b = points["bits"].to_numpy().astype(float)
    n = points["train_examples"].to_numpy().astype(float)
    y = points["gap"].to_numpy()
    rows = []
    for name, (coefs, design) in MODELS.items():
        x = np.column_stack(design(r, b, n))
        c = nnls(x, y)
        resid = y - x @ c
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        loo = [y[i] - x[i] @ nnls(np.delete(x, i, 0), np.delete(y, i)) for i in range(len(y))] if len(y) > 2 else []
        rows.append({
            "model": name, **{k: float(v) for k, v in zip(coefs, c)},
            "r2": 1 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean(resid**2))),
            "loo_rmse": float(np.sqrt(np.mean(np.square(loo)))) if loo else float("nan"),
            "points": len(y),
        })
    return pl.DataFrame(rows)


def b_star(c2: float, ranks: list[int], tolerance: float) -> pl.DataFrame:
    """The fewest bits whose fitted quantization term c2·r·2^(−2b) stays within `tolerance` (nats of eval loss)."""
    rows = []
    for r in ranks:
        need = 0.5 * math.log2(c2 * r / tolerance) if c2 > 0 else float("-inf")
        rows.append({"rank": r, "tolerance": tolerance, "b_star_exact": need,
                     "b_star": max(2, math.ceil(need)) if math.isfinite(need) else 2})
    return pl.DataFrame(rows)


def grad_var_scaling(cells: pl.DataFrame) -> pl.DataFrame:
    """Slopes of log2(excess gradient variance over 16 bits) against log2 r and b; the bound predicts +1 and −2."""
    if "grad_var_mean" not in cells.columns:
        return pl.DataFrame()
    paired = with_reference(cells.filter(pl.col("grad_var_mean").is_not_null()), "grad_var_mean")
    paired = paired.filter((pl.col("mask") == "all") & (pl.col("delta_grad_var_mean") > 0))
    if paired.height < 3 or paired["rank"].n_unique() < 2 or paired["bits"].n_unique() < 2:
        return pl.DataFrame()
    x = np.column_stack([np.ones(paired.height), np.log2(paired["rank"].to_numpy()), paired["bits"].to_numpy()])
    coef, *_ = np.linalg.lstsq(x, np.log2(paired["delta_grad_var_mean"].to_numpy()), rcond=None)
    return pl.DataFrame({"term": ["log2_rank", "bits"], "measured_slope": [coef[1], coef[2]],
                         "predicted_slope": [1.0, -2.0], "points": [paired.height] * 2})


def simulate_noise(ranks=(4, 8, 16, 32), bits=(2, 3, 4, 8), d: int = 256, trials: int = 8, seed: int = 0):
    """Monte-Carlo of the noise model on ΔW = B·A: uniform noise of variance Δ²/12, Δ = 2^(1−b)·R, on A and B.

    Measured E‖ΔW_q − ΔW‖²/d² against the model's r·(σ_B²·Δ_A² + σ_A²·Δ_B²)/12 + r·Δ_A²·Δ_B²/144.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for r, b in itertools.product(ranks, bits):
        measured, predicted = [], []
        for _ in range(trials):
            a, bm = rng.standard_normal((r, d)) / math.sqrt(d), rng.standard_normal((d, r)) / math.sqrt(r)
            da, db = 2.0 ** (1 - b) * np.abs(a).max(), 2.0 ** (1 - b) * np.abs(bm).max()
            aq = a + rng.uniform(-da / 2, da / 2, a.shape)
            bq = bm + rng.uniform(-db / 2, db / 2, bm.shape)
            measured.append(np.mean((bq @ aq - bm @ a) ** 2))
            predicted.append(r * (np.var(bm) * da**2 + np.var(a) * db**2) / 12 + r * da**2 * db**2 / 144)
        rows.append({"rank": r, "bits": b, "measured": float(np.mean(measured)),
                     "predicted": float(np.mean(predicted))})
    return pl.DataFrame(rows).with_columns((pl.col("measured") / pl.col("predicted")).alias("ratio"))
