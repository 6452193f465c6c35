"""The bit term as a power law in the width (Ouyang et al. 2025's form for quantization-induced loss), a rival of
the free-exponent form's exponential one:

    L(r, b, N) = L* + c1·√(r/N) + c2·r^ρ·b^(−γ)      (the bit term is 0 at 16 bits)

Fitted as freefit fits the free form: on a grid of (γ, ρ) nodes, weighted least squares in (L*, c1, c2) at each
node, every node at once (freefit.Fitter with this form's bit term); c2 > 0 at the chosen node.
"""

from __future__ import annotations

import numpy as np

from qlbench.analysis import freefit

FORM = "power_bits"
GAMMAS = np.round(np.arange(0.25, 12.0 + 1e-9, 0.125), 6)
RHOS = np.round(np.arange(-1.0, 2.0 + 1e-9, 0.05), 6)


def quant_term(r, b, rho, gamma):
    """r^ρ·b^(−γ), 0 at 16 bits; broadcasts."""
    r, b = np.asarray(r, float), np.asarray(b, float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = r**rho * b ** (-gamma)
    return np.where(b >= freefit.REFERENCE_BITS, 0.0, q)


def nodes() -> tuple[np.ndarray, np.ndarray]:
    g, r = np.meshgrid(GAMMAS, RHOS, indexing="ij")
    return g.ravel(), r.ravel()


def fitter(design: freefit.Design) -> freefit.Fitter:
    """freefit's Fitter on this form's (γ, ρ) nodes (its `grid` is nominal: the nodes are this form's)."""
    g, rho = nodes()
    q = np.nan_to_num(quant_term(design.r[None], design.b[None], rho[:, None], g[:, None]), nan=0.0, posinf=0.0)
    return freefit.Fitter(design, freefit.Grid(GAMMAS, RHOS, np.zeros(1)), q=q)


def fit(design: freefit.Design, y: np.ndarray, fit_: freefit.Fitter | None = None) -> dict:
    """The best node and its coefficients: {rho, gamma, coef (L*, c1, c2), node}."""
    f = fit_ or fitter(design)
    wsse = f.wsse(y)[:, 0]
    node = int(np.argmin(wsse))
    g, rho = nodes()
    coef = f.coef_at(node, y)
    return {"rho": float(rho[node]), "gamma": float(g[node]), "coef": coef, "node": node,
            "finite": bool(np.isfinite(wsse[node]))}


def predict(coef, r, b, n, rho, gamma) -> np.ndarray:
    r, b, n = (np.asarray(v, float) for v in (r, b, n))
    return coef[0] + coef[1] * np.sqrt(r / n) + coef[2] * quant_term(r, b, rho, gamma)
