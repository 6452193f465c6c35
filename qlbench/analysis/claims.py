"""The bounds paper's claims, tested one by one against a study's cells, each with the power of its test.

Every claim is tested against its nearest rival by an interval: the claim is *supported* when its 95% interval
holds the claim's value and not the rival's, *not supported* when it does not hold the claim's value, and
*undecided (grid)* when the interval holds both, when it reaches the edge of the search range, or when the test's
power on this grid is below `POWER_LEVEL` (qlbench.analysis.power: the claim and its rival planted at the fitted
nuisance values and the measured seed spread, refitted, the chance of deciding correctly). *Not testable*: the
grid lacks the axis.

| claim | measured as | rival |
| --- | --- | --- |
| κ = 2 (bit term ∝ 2^(−2b)) | κ of the free form, profile CI | the integer nearest the estimate (3, 4, … or 1) |
| ρ = 1 (rank coupling) | ρ of the free form, profile CI | ρ = 0 |
| c1 > 0 (√(r/N) term) | c1 in L* + c1·√(r/N) + a·log₂ r + c2·q̂, t-interval | c1 = 0 (an N-independent rank trend) |
| ½ bit per doubling of r | ρ/κ, joint χ²₂ region | 0 |
| ½ bit per doubling of N | β of the free form, from cells of different N only | 0 |
| gradient variance slopes | log₂ excess σ_g² per parameter, OLS t-interval | slope 0 |
| rank → precision table | the paper's table against the gaps (bounds.rank_precision) | the other side of the tolerance |

q̂ is the free fit's bit term at its point estimates (κ̂, ρ̂, β̂), held fixed in every replicate of the c1 test.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from qlbench.analysis import freefit
from qlbench.analysis.bounds import REFERENCE_BITS, design_of, fit_cells, grad_var_column
from qlbench.analysis.stats import ols, t_quantile

POWER_LEVEL = 0.8  # below it, a verdict is "undecided (grid)"


def _slopes(y: np.ndarray, columns: dict[str, np.ndarray], predicted: dict[str, float]) -> pl.DataFrame:
    """OLS of y on an intercept and `columns`: each slope with its 95% t-interval (df = points − parameters)."""
    x = np.column_stack([np.ones(len(y)), *columns.values()])
    coef, cov, df = ols(x, y)
    t = t_quantile(0.975, df) if df > 0 else float("nan")
    s = math.sqrt(float(np.sum((y - x @ coef) ** 2)) / df) if df > 0 else float("nan")
    rows = []
    for i, term in enumerate(columns, start=1):
        se = math.sqrt(cov[i, i]) if df > 0 else float("nan")
        rows.append({"term": term, "measured_slope": float(coef[i]), "ci_lo": float(coef[i] - t * se),
                     "ci_hi": float(coef[i] + t * se), "predicted_slope": predicted[term], "points": len(y),
                     "residual_sd": s})
    return pl.DataFrame(rows)


def grad_var_scaling(cells: pl.DataFrame) -> pl.DataFrame:
    """log₂(excess gradient variance per parameter over the 16-bit cell) = a + s_r·log₂ r + s_b·b, each slope
    with its 95% t-interval; the bound predicts s_r = +1 and s_b = −2 (Var + L²‖x‖²·r·2^(−2b)·R²)."""
    column = grad_var_column(cells)
    if column is None:
        return pl.DataFrame()
    from qlbench.analysis.pairs import with_reference

    paired = with_reference(fit_cells(cells).filter(pl.col(column).is_finite()), column)
    paired = paired.filter((pl.col("mask") == "all") & pl.col(f"delta_{column}").is_finite()
                           & (pl.col(f"delta_{column}") > 0))
    if paired.height < 4 or paired["rank"].n_unique() < 2 or paired["bits"].n_unique() < 2:
        return pl.DataFrame()
    out = _slopes(np.log2(paired[f"delta_{column}"].to_numpy()),
                  {"log2_rank": np.log2(paired["rank"].to_numpy().astype(float)),
                   "bits": paired["bits"].to_numpy().astype(float)}, {"log2_rank": 1.0, "bits": -2.0})
    return out.with_columns(pl.lit(column).alias("column"))


def exponents(pts: pl.DataFrame) -> pl.DataFrame:
    """The free form's exponents on the study's points: κ, ρ (and β with several N) with profile-likelihood
    95% intervals and whether each reaches the search range's edge; ρ/κ (bits per doubling of r) over the joint
    χ²₂ region."""
    design = design_of(pts)
    y = pts["loss"].to_numpy()
    if len(y) <= freefit.n_params(design) or len(np.unique(design.b[design.b < REFERENCE_BITS])) < 1:
        return pl.DataFrame()
    p = freefit.profile(design, y, freefit.grid_for(design))
    names = (("kappa", 2.0), ("rho", 1.0)) + ((("beta", 0.5),) if design.multi_n else ())
    rows = [{"exponent": e, "estimate": float(p[e][0]), "ci_lo": float(p[f"{e}_lo"][0]),
             "ci_hi": float(p[f"{e}_hi"][0]), "predicted": pred, "at_grid_edge": bool(p[f"{e}_edge"][0])}
            for e, pred in names]
    rows.append({"exponent": "rho_over_kappa", "estimate": float(p["ratio"][0]), "ci_lo": float(p["ratio_lo"][0]),
                 "ci_hi": float(p["ratio_hi"][0]), "predicted": 0.5,
                 "at_grid_edge": bool(p["kappa_edge"][0] or p["rho_edge"][0])})
    return pl.DataFrame(rows)


def c1_columns(design: freefit.Design, exps: tuple[float, float, float]) -> np.ndarray | None:
    """[1, √(r/N), log₂ r, q̂]: the c1 test's design; None when c1 cannot be told from an N-independent rank
    trend on this grid (rank-deficient: fewer than 3 ranks on one N, and so on)."""
    q = freefit.quant_term(design.r, design.b, design.n, *exps, design.n0)
    x = np.column_stack([np.ones_like(design.r), np.sqrt(design.r / design.n), np.log2(design.r), q])
    if np.linalg.matrix_rank(x * np.sqrt(design.w)[:, None], tol=1e-9 * np.abs(x).max()) < 4 or len(x) <= 4:
        return None
    return x


def c1_test(design: freefit.Design, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted OLS (weights held fixed) of every column of y on x: c1 with its 95% t-interval."""
    y = y.reshape(len(x), -1)
    sw = np.sqrt(design.w)
    xw, yw = x * sw[:, None], y * sw[:, None]
    pinv = np.linalg.pinv(xw)
    coef = pinv @ yw
    dof = len(x) - x.shape[1]
    s2 = np.sum((yw - xw @ coef) ** 2, axis=0) / dof
    se = np.sqrt(s2 * (pinv @ pinv.T)[1, 1])
    t = t_quantile(0.975, dof)
    return {"c1": coef[1], "c1_lo": coef[1] - t * se, "c1_hi": coef[1] + t * se, "coef": coef}


def decide(design: freefit.Design, y: np.ndarray, grid: freefit.Grid, c1_x: np.ndarray | None) -> dict:
    """Every claim's interval for every column of y (the observed points, or simulated ones): the free fit's
    exponents and ratio, and the c1 test."""
    out = freefit.profile(design, y, grid)
    if c1_x is not None:
        out.update(c1_test(design, c1_x, y))
    return out


def interval_correct(lo, hi, edge, claim: float, rival: float):
    """(correct when the claim is true, correct when the rival is): the claim's interval holds the claim and not
    the rival and stays off the search range's edge; the rival's interval excludes the claim."""
    holds = lambda v: (lo <= v) & (v <= hi)
    return holds(claim) & ~holds(rival) & ~edge, ~holds(claim)


def verdict(testable: bool, lo: float, hi: float, edge: bool, claim: float, rival: float, power: float) -> str:
    if not testable:
        return "not testable"
    holds = lambda v: lo <= v <= hi
    if edge or not power >= POWER_LEVEL:
        return "undecided (grid)"
    if holds(claim) and not holds(rival):
        return "supported"
    if not holds(claim):
        return "not supported"
    return "undecided (grid)"


def _row(claim, measured, lo, hi, predicted, verdict_, evidence, rival=float("nan"), power=float("nan"),
         power_claim=float("nan"), power_rival=float("nan"), at_bound=False):
    return {"claim": claim, "measured": measured, "ci_lo": lo, "ci_hi": hi, "predicted": predicted,
            "verdict": verdict_, "rival": rival, "power": power, "power_if_claim": power_claim,
            "power_if_rival": power_rival, "at_bound": at_bound, "evidence": evidence}


def verdicts(pts: pl.DataFrame, fits: pl.DataFrame, grad_slopes: pl.DataFrame, table: pl.DataFrame,
             powers: dict) -> pl.DataFrame:
    """One row per claim of the bounds paper: the measured number with its 95% interval, the predicted one, the
    rival it was tested against, the test's power (the smaller of its chance of deciding correctly when the claim
    is true and when the rival is; `power_if_claim`, `power_if_rival`), and the verdict."""
    nan = float("nan")
    design = design_of(pts)
    obs = powers["observed"]
    best = fits.filter(pl.col("supported")).row(0, named=True)
    n_ranks, multi_n = len(np.unique(design.r)), design.multi_n
    widths = len(np.unique(design.b[design.b < REFERENCE_BITS]))
    rows = []

    def interval_row(key, claim_text, claim_value, testable, why_not, evidence):
        pw = powers.get(key, {})
        if not testable:
            return _row(claim_text, nan, nan, nan, claim_value, "not testable", why_not)
        lo, hi, edge = float(obs[f"{key}_lo"][0]), float(obs[f"{key}_hi"][0]), bool(obs.get(f"{key}_edge",
                                                                                              [False])[0])
        est = float(obs[key][0])
        v = verdict(True, lo, hi, edge, claim_value, pw.get("rival", nan), pw.get("power", nan))
        note = evidence + ("; its interval reaches the edge of the search range" if edge else "")
        return _row(claim_text, est, lo, hi, claim_value, v, note, pw.get("rival", nan), pw.get("power", nan),
                    pw.get("power_if_claim", nan), pw.get("power_if_rival", nan))

    rows.append(interval_row("kappa", "exponential bit scaling: quantization term ∝ 2^(−2b) (κ = 2)", 2.0,
                             widths >= 2 and len(pts) > freefit.n_params(design), "fewer than two quantized widths",
                             "κ of L* + c1·√(r/N) + c2·r^ρ·2^(−κb) fitted free (profile-likelihood CI, search range "
                             "0.2–6)"))
    rows.append(interval_row("rho", "rank–precision coupling: higher ranks need more bits (ρ = 1)", 1.0,
                             n_ranks >= 2 and widths >= 1 and len(pts) > freefit.n_params(design), "one rank",
                             "ρ of c2·r^ρ·2^(−κb) fitted free (profile-likelihood CI, search range −1–2)"))
    c1_ok = "c1" in obs
    rows.append(interval_row("c1", "generalisation term c1·√(r/N) > 0 (not an N-independent rank trend)", nan,
                             c1_ok, "√(r/N) cannot be told from an N-independent rank trend a·log₂ r on this grid "
                             "(needs three ranks, or two N)",
                             "c1 of L* + c1·√(r/N) + a·log₂ r + c2·q̂ (q̂: the free fit's bit term), weighted OLS "
                             "t-interval; supported when its lower end is above 0") if not c1_ok else
                _c1_row(obs, powers.get("c1", {})))
    grads = {r["term"]: r for r in grad_slopes.iter_rows(named=True)} if grad_slopes.height else {}
    for term, what, pred in (("log2_rank", "per doubling of r", 1.0), ("bits", "per bit", -2.0)):
        claim = f"gradient variance O(r·2^(−2b)): log₂ slope {what}"
        if term in grads:
            slope = grads[term]
            pw = powers.get(f"grad_{term}", {})
            v = verdict(True, slope["ci_lo"], slope["ci_hi"], False, pred, 0.0, pw.get("power", nan))
            rows.append(_row(claim, slope["measured_slope"], slope["ci_lo"], slope["ci_hi"], pred, v,
                             f"log₂ excess σ_g² over the 16-bit cell ({slope.get('column', 'grad_var_mean')}), "
                             f"{slope['points']} cells, t-interval", 0.0, pw.get("power", nan),
                             pw.get("power_if_claim", nan), pw.get("power_if_rival", nan)))
        else:
            rows.append(_row(claim, nan, nan, nan, pred, "not testable",
                             "no gradient variance measured against a 16-bit cell (grad_var_points), or one rank/width"))
    rows.append(interval_row("ratio", "b* rule: b* ≥ ½·log₂ r + …: bits per doubling of r", 0.5,
                             n_ranks >= 2 and widths >= 2 and len(pts) > freefit.n_params(design), "one rank",
                             f"ρ/κ (joint 95% region of the free fit); b* tables come from the supported form "
                             f"`{best['form']}`"))
    rows.append(interval_row("beta", "b* rule: … + ½·log₂ N: bits per doubling of N", 0.5,
                             multi_n and widths >= 2 and len(pts) > freefit.n_params(design),
                             "one data size N: bits per doubling of N are measured only from cells of different N",
                             "β of c2·r^ρ·2^(−κ(b − β·log₂ N/N₀)), fitted from cells of different N (profile CI); "
                             "the bound's own terms give 0 at a fixed tolerance (¼ against √(r/N))"))
    rows.append(_table_row(table))
    return pl.DataFrame(rows)


def _c1_row(obs: dict, pw: dict) -> dict:
    nan = float("nan")
    est, lo, hi = float(obs["c1"][0]), float(obs["c1_lo"][0]), float(obs["c1_hi"][0])
    power = pw.get("power", nan)
    if not power >= POWER_LEVEL:
        v = "undecided (grid)"
    else:
        v = "supported" if lo > 0 else "not supported" if hi < 0 or est <= 0 else "undecided (grid)"
    at_bound = False
    text = ("c1 of L* + c1·√(r/N) + a·log₂ r + c2·q̂ (q̂: the free fit's bit term at its estimates, held), weighted "
            f"OLS t-interval; supported when its lower end is above 0; planted c1 = {pw.get('claim_value', nan):.3g} "
            "against 0")
    return _row("generalisation term c1·√(r/N) > 0 (not an N-independent rank trend)", est, lo, hi, nan, v, text,
                0.0, power, pw.get("power_if_claim", nan), pw.get("power_if_rival", nan), at_bound)


def _table_row(table: pl.DataFrame) -> dict:
    nan = float("nan")
    claim = "rank → precision table (the paper's: 8-bit for ranks ≤ 16, 16-bit above; avoid 4-bit above rank 8)"
    if not table.height:
        return _row(claim, nan, nan, nan, nan, "not testable", "the grid scans neither 8 nor 4 bits at a rank the "
                    "table speaks of, or no 16-bit reference")
    decided = table.filter(pl.col("decided") != "undecided")
    agree, disagree = int(decided["agree"].sum()), int((~decided["agree"]).sum())
    power = float(table["power"].min()) if table["power"].is_not_null().any() else nan
    if disagree:
        v = "not supported"
    elif decided.height == table.height and power >= POWER_LEVEL:
        v = "supported"
    else:
        v = "undecided (grid)"
    return _row(claim, float(agree), nan, nan, float(table.height), v,
                f"{agree} of {table.height} statements (rank, N, width) agree, {disagree} disagree, "
                f"{table.height - decided.height} undecided by the 95% interval of the gap over seeds",
                nan, power, nan, nan)
