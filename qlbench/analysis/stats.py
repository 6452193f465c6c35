"""Small statistics the analyses share, in numpy only: Student-t quantiles, Spearman ρ, OLS with coefficient CIs."""

from __future__ import annotations

import math

import numpy as np


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom: the density integrated by Simpson's
    rule on a fine grid and the upper limit found by bisection (|error| < 1e-7; t(0.975, 1) = 12.7062...)."""
    if df <= 0:
        return float("nan")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def mass(q: float) -> float:  # P(0 < T < q)
        u = np.linspace(0.0, math.atan(q), 4001)  # x = tan u spreads the heavy tail evenly
        x = np.tan(u)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df)) / np.cos(u) ** 2
        h = u[1] - u[0]
        return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while mass(hi) < p - 0.5:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


def ci95_halfwidth(sd: float, n: int) -> float:
    """Half-width of the 95% CI of a mean of n values with sample sd: t(0.975, n−1)·sd/√n."""
    return t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n >= 2 and sd == sd else float("nan")


def ranks(values) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        same = v == x
        r[same] = r[same].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's ρ: Pearson's correlation of the (tie-averaged) ranks."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Ordinary least squares: coefficients, their covariance (residual variance × (XᵀX)⁻¹), residual df."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - x.shape[1]
    s2 = float(np.sum((y - x @ coef) ** 2)) / df if df > 0 else float("nan")
    return coef, s2 * np.linalg.pinv(x.T @ x), df


def spearman_test(a, b, draws: int = 20000, rng_seed: int = 0) -> dict:
    """Spearman's ρ of a and b with its null probability and a 95% CI.

    p: the one-sided permutation probability P(ρ ≥ observed) when the pairing is random — exact over all n!
    permutations for n ≤ 8 (4 masks in perfect agreement: p = 1/24; ρ = 0.8 over 4: p = 4/24 = 1/6), else by
    `draws` random permutations. CI: Fisher's z with the standard error √(1.06/(n − 3)) of Fieller, Hartley and
    Pearson (1957); NaN for n ≤ 3."""
    import itertools

    nan = float("nan")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    rho = spearman(a, b) if n >= 2 else nan
    if n < 3 or rho != rho:
        return {"rho": rho, "p": nan, "exact": False, "ci_lo": nan, "ci_hi": nan, "n": n}
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if n <= 8:
        perms = np.array(list(itertools.permutations(range(n))))
        exact = True
    else:
        rng = np.random.default_rng(rng_seed)
        perms = np.argsort(rng.random((draws, n)), axis=1)
        exact = False
    null = rb[perms] @ ra / denom
    p = float(np.mean(null >= rho - 1e-12))
    if n > 3:
        z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt(1.06 / (n - 3))
        lo, hi = math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)
    else:
        lo = hi = nan
    return {"rho": rho, "p": p, "exact": exact, "ci_lo": lo, "ci_hi": hi, "n": n}
