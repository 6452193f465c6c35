"""The power of every bounds verdict on a grid: a parametric bootstrap.

For each claim, the claim's value and its nearest rival are planted at the nuisance values fitted with that value
held (e.g. the best (ρ, β, L*, c1, c2) at κ = 2, and at κ = 3), the seed noise is the measured one (each point's
mean gets noise of variance 1/weight: the weights are inverse variances of seed means, floored at the median over
points; with one seed, the free fit's residual variance), the replicates are refitted by the very test that
decides the verdict (qlbench.analysis.claims.decide, weights held fixed), and the power is the smaller of the two
chances of deciding correctly: the claim's interval holding the claim and not the rival (and off the search range's
edge) when the claim is true, and excluding the claim when the rival is. Every truth shares the same random
draws (common random numbers), and the whole simulation is one batched fit (numpy).

The same machinery answers `qlbench plan`: the truths fitted on the study's cells are planted on a larger grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from qlbench.analysis import claims, freefit
from qlbench.analysis.bounds import design_of

REPLICATES = 200
KAPPA_RIVALS = (1.0, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class Truth:
    """A planted law: the free form's exponents and coefficients (N₀ fixed where it was fitted), or the c1 test's
    linear model (`linear`: coefficients of [1, √(r/N), log₂ r, q̂] with q̂ at `exps`)."""

    kappa: float
    rho: float
    beta: float
    coef: tuple
    n0: float
    linear: tuple | None = None

    def mean(self, d: freefit.Design) -> np.ndarray:
        q = freefit.quant_term(d.r, d.b, d.n, self.kappa, self.rho, self.beta, self.n0)
        if self.linear is not None:
            a = self.linear
            return a[0] + a[1] * np.sqrt(d.r / d.n) + a[2] * np.log2(d.r) + a[3] * q
        return self.coef[0] + self.coef[1] * np.sqrt(d.r / d.n) + self.coef[2] * q


def _truth(design, fit) -> Truth:
    return Truth(fit["kappa"], fit["rho"], fit["beta"], tuple(fit["coef"]), design.n0)


def kappa_rival(estimate: float) -> float:
    """The integer other than 2 nearest the estimate: κ = 2 against 3, 4, … (or 1)."""
    return min(KAPPA_RIVALS, key=lambda k: (abs(k - estimate), k))


def noise_sd(pts: pl.DataFrame, design: freefit.Design, observed: dict) -> np.ndarray:
    """Each point's noise (sd of its seed mean): 1/√weight where seeds were measured; with one seed per point,
    the free fit's residual scale over √weight."""
    if "seeds" in pts.columns and pts["seeds"].max() >= 2 and pts["var"].drop_nulls().len():
        return 1 / np.sqrt(design.w)
    return np.sqrt(float(observed["s2"][0]) / design.w)


def truths(pts: pl.DataFrame, observed: dict) -> dict[str, tuple[Truth, Truth, float, float]]:
    """Per claim: (truth if the claim holds, truth if the rival does, the claim's value, the rival's), each
    fitted on the study's points with the claim's (rival's) value held."""
    design = design_of(pts)
    y = pts["loss"].to_numpy()
    grid = freefit.grid_for(design, fine=False)
    fitter = freefit.Fitter(design, grid)
    out = {}
    k_rival = kappa_rival(float(observed["kappa"][0]))
    out["kappa"] = (_truth(design, freefit.constrained(design, y, grid, kappa=2.0, fitter=fitter)),
                    _truth(design, freefit.constrained(design, y, grid, kappa=k_rival, fitter=fitter)), 2.0, k_rival)
    rho0 = _truth(design, freefit.constrained(design, y, grid, rho=0.0, fitter=fitter))
    out["rho"] = (_truth(design, freefit.constrained(design, y, grid, rho=1.0, fitter=fitter)), rho0, 1.0, 0.0)
    out["ratio"] = (_truth(design, freefit.constrained(design, y, grid, ratio=0.5, fitter=fitter)), rho0, 0.5, 0.0)
    if design.multi_n:
        out["beta"] = (_truth(design, freefit.constrained(design, y, grid, beta=0.5, fitter=fitter)),
                       _truth(design, freefit.constrained(design, y, grid, beta=0.0, fitter=fitter)), 0.5, 0.0)
    else:  # a plan that adds N plants β at the one N's fit, N₀ = that N (its cells keep their values)
        base = freefit.constrained(design, y, grid, beta=0.0, fitter=fitter)
        out["beta"] = (Truth(base["kappa"], base["rho"], 0.5, tuple(base["coef"]), design.n0),
                       _truth(design, base), 0.5, 0.0)
    exps = _exps(observed)
    x = claims.c1_columns(design, exps)
    if x is not None:
        t = claims.c1_test(design, x, y)
        c1, lo, hi = float(t["c1"][0]), float(t["c1_lo"][0]), float(t["c1_hi"][0])
        # the claim at the fitted c1 where it is clearly positive, else at the largest the data allow
        value = c1 if lo > 0 else (hi if hi > 0 else abs(c1))
        out["c1"] = (_linear_truth(design, x, y, exps, value), _linear_truth(design, x, y, exps, 0.0), value, 0.0)
    return out


def _exps(observed: dict) -> tuple[float, float, float]:
    return float(observed["kappa"][0]), float(observed["rho"][0]), float(observed["beta"][0])


def _linear_truth(design, x, y, exps, c1: float) -> Truth:
    """The c1 test's model with c1 held at `c1` and the other coefficients refitted (weights fixed)."""
    sw = np.sqrt(design.w)
    rest = np.delete(x, 1, axis=1)
    a = np.linalg.lstsq(rest * sw[:, None], (y - c1 * x[:, 1]) * sw, rcond=None)[0]
    return Truth(*exps, (0.0, 0.0, 0.0), design.n0, linear=(a[0], c1, a[1], a[2]))


def simulate(design: freefit.Design, sd: np.ndarray, pairs: dict, replicates: int, rng_seed: int,
             c1_exps: tuple[float, float, float] | None, sds: dict[str, np.ndarray] | None = None
             ) -> dict[str, dict]:
    """Plant every (claim, rival) pair on `design`, refit each replicate with the verdicts' test, and return per
    claim: power, power_if_claim, power_if_rival, rival, claim_value, replicates. `sds`: a pair's own noise sd
    (the plan's nuisance draws), else `sd`."""
    if not pairs:
        return {}
    z = np.random.default_rng(rng_seed).standard_normal((len(design.r), replicates))
    names = list(pairs)
    sds = sds or {}
    y = np.concatenate([t.mean(design)[:, None] + sds.get(n, sd)[:, None] * z for n in names for t in pairs[n][:2]],
                       axis=1)
    c1_x = (claims.c1_columns(design, c1_exps)
            if c1_exps is not None and any(n.split("@")[0] == "c1" for n in pairs) else None)
    got = claims.decide(design, y, freefit.grid_for(design, fine=False), c1_x)
    out = {}
    for i, name in enumerate(names):
        claim_value, rival = pairs[name][2], pairs[name][3]
        parts = []
        for j in (0, 1):
            sl = slice((2 * i + j) * replicates, (2 * i + j + 1) * replicates)
            if name.split("@")[0] == "c1":
                if c1_x is None:
                    parts = None
                    break
                lo = got["c1_lo"][sl]
                parts.append(lo > 0 if j == 0 else ~(lo > 0))
            else:
                key = name.split("@")[0]  # `claim@i`: the claim planted at the i-th nuisance draw
                ok = claims.interval_correct(got[f"{key}_lo"][sl], got[f"{key}_hi"][sl], got[f"{key}_edge"][sl],
                                             claim_value, rival)
                parts.append(ok[j])
        if parts is None:
            continue
        p_claim, p_rival = float(np.mean(parts[0])), float(np.mean(parts[1]))
        out[name] = {"power": min(p_claim, p_rival), "power_if_claim": p_claim, "power_if_rival": p_rival,
                     "rival": rival, "claim_value": claim_value, "replicates": replicates}
    return out


def interval_power(distance_in_se: float, t: float) -> tuple[float, float]:
    """A slope estimated ~ N(truth, se²) with a ±t·se interval, claim and rival `distance_in_se` apart:
    (P(interval holds the claim, not the rival | claim), P(interval excludes the claim | rival))."""
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    d = abs(distance_in_se)
    inside = phi(t) - phi(-t)
    both = max(0.0, phi(t - d) - phi(-t)) if d < 2 * t else 0.0
    return inside - both, 1 - (phi(d + t) - phi(d - t))


def grad_powers(grad_slopes: pl.DataFrame) -> dict:
    """The gradient-variance slopes' power against a slope of 0, by the normal approximation with the measured
    residual sd (their fit is ordinary least squares: no simulation needed)."""
    out = {}
    for s in grad_slopes.iter_rows(named=True) if grad_slopes.height else []:
        half = (s["ci_hi"] - s["ci_lo"]) / 2
        dof = s["points"] - 3
        if not half > 0 or dof < 1:
            continue
        from qlbench.analysis.stats import t_quantile

        t = t_quantile(0.975, dof)
        se = half / t
        p_claim, p_rival = interval_power(s["predicted_slope"] / se, t)
        out[f"grad_{s['term']}"] = {"power": min(p_claim, p_rival), "power_if_claim": p_claim,
                                    "power_if_rival": p_rival, "rival": 0.0}
    return out


def claim_powers(pts: pl.DataFrame, grad_slopes: pl.DataFrame | None = None, replicates: int = REPLICATES,
                 rng_seed: int = 0) -> dict:
    """The observed intervals (`observed`) and every claim's power on the study's own grid."""
    design = design_of(pts)
    y = pts["loss"].to_numpy()
    observed = freefit.profile(design, y, freefit.grid_for(design))
    x = claims.c1_columns(design, _exps(observed))
    if x is not None:
        observed.update(claims.c1_test(design, x, y))
    pairs = truths(pts, observed)
    if not design.multi_n:
        pairs.pop("beta")
    sd = noise_sd(pts, design, observed)
    out = simulate(design, sd, pairs, replicates, rng_seed, _exps(observed))
    out.update(grad_powers(grad_slopes if grad_slopes is not None else pl.DataFrame()))
    out["observed"] = observed
    return out
