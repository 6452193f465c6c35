"""Each form's held-out prediction error: the test a scaling law must pass (Zhang et al., ICLR 2024, for
fine-tuning laws). Leave one quantized width out (all its points), fit the form on the rest, predict the width's
points; the same with one rank (its 16-bit points too). The error is the RMSE (nats) of those predictions over
every fold. A fold whose training points cannot identify the form (a free bit exponent from one quantized width, a
free rank exponent from one rank, no more points than parameters) gives no prediction; a form with no fold left is
NaN.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from qlbench.analysis import freefit, powerbits

FREE_RANK = {"free", powerbits.FORM}  # forms whose rank exponent is fitted


def _predictor(bounds, name: str, form, train: pl.DataFrame):
    """A function (r, b, n, g) -> predicted loss, fitted on `train`, or None where `train` cannot identify it."""
    r, b, n, g = bounds.point_arrays(train)
    y, w = train["loss"].to_numpy(), train["weight"].to_numpy()
    widths = len(np.unique(b[b < freefit.REFERENCE_BITS]))
    if name in FREE_RANK and len(np.unique(r)) < 2 or name in ("free", powerbits.FORM) and widths < 2 or widths < 1:
        return None
    if name == "free":
        design = bounds.design_of(train)
        if len(y) <= freefit.n_params(design):
            return None
        prof = freefit.profile(design, y, freefit.grid_for(design))
        k, rho, beta = (float(prof[e][0]) for e in ("kappa", "rho", "beta"))
        c = freefit.coefficients(design, y, k, rho, beta)
        n0 = design.n0
        return lambda r_, b_, n_, g_: (c[0] + c[1] * np.sqrt(r_ / n_)
                                       + c[2] * freefit.quant_term(r_, b_, n_, k, rho, beta, n0))
    if name == powerbits.FORM:
        design = bounds.design_of(train)
        if len(y) <= 5:
            return None
        f = powerbits.fit(design, y)
        return lambda r_, b_, n_, g_: powerbits.predict(f["coef"], r_, b_, n_, f["rho"], f["gamma"])
    coefs, design_fn = form
    if len(y) <= len(coefs):
        return None
    _, c = bounds._linear(name, coefs, design_fn, r, b, n, g, w, y)
    return lambda r_, b_, n_, g_: np.column_stack(design_fn(r_, b_, n_, g_)) @ c[:, 0]


def errors(pts: pl.DataFrame, names: list[str], bounds) -> dict[str, dict[str, float]]:
    """Per form: {"width": RMSE leaving one quantized width out, "rank": RMSE leaving one rank out}. `bounds`: the
    module that fits the forms (qlbench.analysis.bounds, which calls this and hands itself in: no import circle)."""
    forms = bounds.forms_for(pts)
    out = {}
    for name in names:
        got = {}
        for axis, column, values in (("width", "bits", sorted({b for b in pts["bits"].to_list() if b < 16})),
                                     ("rank", "rank", sorted(set(pts["rank"].to_list())))):
            resid = []
            for v in values:
                test, train = pts.filter(pl.col(column) == v), pts.filter(pl.col(column) != v)
                f = _predictor(bounds, name, forms.get(name), train)
                if f is None or test.is_empty():
                    continue
                r, b, n, g = bounds.point_arrays(test)
                resid.append(test["loss"].to_numpy() - f(r, b, n, g))
            resid = np.concatenate(resid) if resid else np.array([])
            got[axis] = float(np.sqrt(np.mean(resid**2))) if resid.size and np.isfinite(resid).all() else float("nan")
        out[name] = got
    return out
