"""The bound's free-exponent form, fitted for many data sets at once (numpy, vectorised over replicates):

    L(r, b, N) = L* + c1·√(r/N) + c2·r^ρ·2^(−κ·(b − β·log₂(N/N₀)))      (the bit term is 0 at 16 bits)

κ is the bit exponent (the bound says 2), ρ the rank exponent (1), β the bits per doubling of N that keep the
bit term constant (the paper's b* rule says ½; the bound's own terms, 0), N₀ the geometric mean of the grid's N.
β is fitted only when the grid has two or more N (else it is held at 0: not testable).

How: on a grid of (κ, ρ, β) nodes, weighted least squares in the three linear coefficients. L* and c1 do not
depend on the node, so they are projected out once; at each node what remains is a one-column regression, and
the weighted SSE of every node and every replicate is one matrix product (nodes × points @ points × replicates).
The weights are held fixed across replicates (the point fit's): every replicate is fitted by the same estimator,
and the fit is a fixed linear map per node. Intervals by profile likelihood: the nodes whose WSSE is within
χ²₁(0.95)·s² of the best, s² = best WSSE/(points − parameters), so the weights need be right only up to a scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_BITS = 16
CHI2_1 = 3.841458820694124  # χ²₁(0.95)
CHI2_2 = 5.991464547107979  # χ²₂(0.95)


@dataclass(frozen=True)
class Design:
    """Where the points are (rank, bits, N per point) and the weights every fit on them uses."""

    r: np.ndarray
    b: np.ndarray
    n: np.ndarray
    w: np.ndarray

    @property
    def multi_n(self) -> bool:
        return len(np.unique(self.n)) >= 2

    @property
    def n0(self) -> float:
        return float(np.exp(np.mean(np.log(np.unique(self.n)))))

    def without(self, i: int) -> "Design":
        keep = np.arange(len(self.r)) != i
        return Design(self.r[keep], self.b[keep], self.n[keep], self.w[keep])


def make_design(r, b, n, w) -> Design:
    return Design(*(np.asarray(v, dtype=float) for v in (r, b, n, w)))


@dataclass(frozen=True)
class Grid:
    """The search range of the exponents: a CI that reaches an end of a range is not a measurement."""

    kappas: np.ndarray
    rhos: np.ndarray
    betas: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.kappas), len(self.rhos), len(self.betas)

    def nodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k, r, b = np.meshgrid(self.kappas, self.rhos, self.betas, indexing="ij")
        return k.ravel(), r.ravel(), b.ravel()


def _axis(lo, hi, step):
    return np.round(np.arange(lo, hi + step / 2, step), 6)


def grid_for(design: Design, fine: bool = True) -> Grid:
    """κ ∈ [0.2, 6], ρ ∈ [−1, 2]; β ∈ [−1, 1.5] where the grid has several N (else β = 0). Coarser steps when β
    is free (three axes) or for simulations (`fine=False`). Every axis holds the claims' and rivals' values
    (κ = 1…5, ρ = 0, 1, ρ = κ/2 for the ratio, β = 0, ½)."""
    if design.multi_n:
        return Grid(_axis(0.2, 6.0, 0.1 if fine else 0.2), _axis(-1.0, 2.0, 0.1),
                    _axis(-1.0, 1.5, 0.125))
    return Grid(_axis(0.2, 6.0, 0.05 if fine else 0.1), _axis(-1.0, 2.0, 0.025 if fine else 0.05), np.zeros(1))


def quant_term(r, b, n, kappa, rho, beta, n0):
    """r^ρ·2^(−κ(b − β·log₂(N/N₀))), 0 at 16 bits; broadcasts."""
    with np.errstate(over="ignore", invalid="ignore"):
        q = r**rho * 2.0 ** (-kappa * (b - beta * np.log2(n / n0)))
    return np.where(b >= REFERENCE_BITS, 0.0, q)


def _base(design: Design):
    """Weighted columns [1, √(r/N)] and the projection onto their complement."""
    sw = np.sqrt(design.w)
    base = np.column_stack([np.ones_like(design.r), np.sqrt(design.r / design.n)]) * sw[:, None]
    pinv = np.linalg.pinv(base)
    return sw, base, pinv, np.eye(len(sw)) - base @ pinv


def n_params(design: Design) -> int:
    return 6 if design.multi_n else 5


class Fitter:
    """One design on one grid: the bit term of every node at every point, computed once (nodes × points), so
    that a leave-one-out refit is a rank-one downdate and a batch of replicates is one matrix product."""

    def __init__(self, design: Design, grid: Grid, q: np.ndarray | None = None):
        self.design, self.grid = design, grid
        if q is None:
            k, rho, beta = grid.nodes()
            q = np.nan_to_num(quant_term(design.r[None], design.b[None], design.n[None], k[:, None], rho[:, None],
                                         beta[:, None], design.n0), nan=0.0, posinf=0.0)
        self.q = q
        self.sw, self.base, self.pinv, self.proj = _base(design)
        qw = q * self.sw[None]
        g = np.linalg.pinv(self.base.T @ self.base)
        self.qw, self.qb, self.qsum = qw, qw @ self.base, np.sum(qw**2, axis=1)
        self.qq = self.qsum - np.sum((self.qb @ g) * self.qb, axis=1)

    def loo_node(self, i: int, y: np.ndarray) -> int:
        """The best node of the fit without point i (its weight set to 0: the same as deleting it), by a
        rank-one downdate of the node sums rather than a new grid."""
        sw = self.sw.copy()
        sw[i] = 0.0
        base = self.base.copy()
        base[i] = 0.0
        yt = (np.eye(len(sw)) - base @ np.linalg.pinv(base)) @ (y * sw)
        qi = self.qw[:, i]
        qb = self.qb - np.outer(qi, self.base[i])
        qq = self.qsum - qi**2 - np.sum((qb @ np.linalg.pinv(base.T @ base)) * qb, axis=1)
        dot = self.qw @ yt  # yt[i] = 0: point i drops out
        ok = (dot > 0) & (qq > 1e-300)
        return int(np.argmin(np.where(ok, yt @ yt - np.where(ok, dot, 0.0) ** 2 / np.maximum(qq, 1e-300), np.inf)))

    def coef_at(self, node: int, y: np.ndarray, drop: int | None = None) -> np.ndarray:
        """(L*, c1, c2) at one node, optionally without point `drop`."""
        sw = self.sw.copy()
        base = self.base.copy()
        if drop is not None:
            sw[drop], base[drop] = 0.0, 0.0
        pinv = np.linalg.pinv(base)
        proj = np.eye(len(sw)) - base @ pinv
        q, yw = self.q[node] * sw, y * sw
        qt, yt = proj @ q, proj @ yw
        c2 = float(qt @ yt / (qt @ qt)) if qt @ qt > 0 else 0.0
        lc = pinv @ (yw - c2 * q)
        return np.array([lc[0], lc[1], c2])

    def predict_at(self, node: int, coef: np.ndarray, i: int) -> float:
        d = self.design
        return float(coef[0] + coef[1] * np.sqrt(d.r[i] / d.n[i]) + coef[2] * self.q[node, i])

    def wsse(self, y: np.ndarray) -> np.ndarray:
        """Weighted SSE at every node for every column of y (points × replicates): nodes × replicates, +inf where
        the best bit coefficient c2 would not be positive (a bit term that helps must have c2 > 0)."""
        y = y.reshape(len(self.sw), -1)
        yt = self.proj @ (y * self.sw[:, None])
        yy = np.sum(yt**2, axis=0)
        dot = self.qw @ yt  # q̃·ỹ = q·ỹ: the projection is symmetric and idempotent
        ok = (dot > 0) & (self.qq[:, None] > 1e-300)
        return np.where(ok, yy[None] - np.where(ok, dot, 0.0) ** 2 / np.maximum(self.qq, 1e-300)[:, None], np.inf)


def wsse_grid(design: Design, y: np.ndarray, grid: Grid) -> np.ndarray:
    return Fitter(design, grid).wsse(y)


def coefficients(design: Design, y: np.ndarray, kappa: float, rho: float, beta: float) -> np.ndarray:
    """(L*, c1, c2) at one node for one data set (points,)."""
    sw, _, pinv, proj = _base(design)
    q = quant_term(design.r, design.b, design.n, kappa, rho, beta, design.n0) * sw
    yw = y * sw
    qt, yt = proj @ q, proj @ yw
    c2 = float(qt @ yt / (qt @ qt)) if qt @ qt > 0 else 0.0
    lc = pinv @ (yw - c2 * q)
    return np.array([lc[0], lc[1], c2])


def predict(design: Design, coef, kappa, rho, beta) -> np.ndarray:
    return (coef[0] + coef[1] * np.sqrt(design.r / design.n)
            + coef[2] * quant_term(design.r, design.b, design.n, kappa, rho, beta, design.n0))


def _interval(values, profile, best, s2, half, level):
    """Per replicate: lo, hi of the values whose profile WSSE is within level·s² of the best; at the grid's edge."""
    inside = profile - best[None] <= level * s2[None]  # values × replicates
    big = np.where(inside, values[:, None], np.inf).min(axis=0)
    small = np.where(inside, values[:, None], -np.inf).max(axis=0)
    edge = inside[0] | inside[-1] if len(values) > 1 else np.zeros(inside.shape[1], bool)
    return big - half, small + half, edge


def profile(design: Design, y: np.ndarray, grid: Grid, fitter: Fitter | None = None, chunk: int = 0
            ) -> dict[str, np.ndarray]:
    """The free fit for every column of y: per exponent its estimate, 95% profile-likelihood interval and whether
    it reaches the search range's edge; the ratio ρ/κ (bits per doubling of r) over the joint χ²₂ region; the
    best WSSE and node. Arrays of one entry per replicate (columns taken a chunk at a time)."""
    fitter = fitter or Fitter(design, grid)
    y = y.reshape(len(design.r), -1)
    chunk = chunk or max(1, int(2e7 // max(fitter.q.shape[0], 1)))
    parts = [_profile(fitter, y[:, s:s + chunk]) for s in range(0, y.shape[1], chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _profile(fitter: Fitter, y: np.ndarray) -> dict[str, np.ndarray]:
    design, grid = fitter.design, fitter.grid
    wsse = fitter.wsse(y).reshape(*grid.shape, -1)
    flat = wsse.reshape(-1, wsse.shape[-1])
    best_node = np.argmin(flat, axis=0)
    best = flat[best_node, np.arange(flat.shape[1])]
    dof = max(len(design.r) - n_params(design), 1)
    s2 = np.maximum(best / dof, 1e-300)
    ik, ir, ib = np.unravel_index(best_node, grid.shape)
    out = {"wsse": best, "s2": s2, "node": best_node}
    for name, values, axes, idx in (("kappa", grid.kappas, (1, 2), ik), ("rho", grid.rhos, (0, 2), ir),
                                    ("beta", grid.betas, (0, 1), ib)):
        prof = wsse.min(axis=axes)
        half = float(values[1] - values[0]) / 2 if len(values) > 1 else 0.0
        lo, hi, edge = _interval(values, prof, best, s2, half, CHI2_1)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"], out[f"{name}_edge"] = values[idx], lo, hi, edge
    joint = wsse.min(axis=2) - best[None, None] <= CHI2_2 * s2[None, None]  # κ × ρ × replicates
    hk = (grid.kappas[1] - grid.kappas[0]) / 2
    hr = (grid.rhos[1] - grid.rhos[0]) / 2
    kk, rr = np.meshgrid(grid.kappas, grid.rhos, indexing="ij")
    corners = np.stack([(rr + dr) / (kk + dk) for dr in (-hr, hr) for dk in (-hk, hk)])  # each node is a cell
    lo_node, hi_node = corners.min(axis=0), corners.max(axis=0)
    out["ratio"] = grid.rhos[ir] / grid.kappas[ik]
    out["ratio_lo"] = np.where(joint, lo_node[..., None], np.inf).min(axis=(0, 1))
    out["ratio_hi"] = np.where(joint, hi_node[..., None], -np.inf).max(axis=(0, 1))
    out["ratio_edge"] = out["kappa_edge"] | out["rho_edge"]
    return out


def constrained(design: Design, y: np.ndarray, grid: Grid, kappa=None, rho=None, beta=None, ratio=None,
                fitter: Fitter | None = None) -> dict:
    """The best node of one data set with some exponents held (ratio: ρ = ratio·κ), its coefficients and its
    fitted values: the nuisance values at which a claim or its rival is planted."""
    wsse = (fitter or Fitter(design, grid)).wsse(y)[:, 0]
    k, r, b = grid.nodes()
    keep = np.ones_like(k, bool)
    for held, axis in ((kappa, k), (rho, r), (beta, b)):
        if held is not None:
            keep &= np.isclose(axis, held)
    if ratio is not None:
        keep &= np.isclose(r, ratio * k)
    if not keep.any():
        raise ValueError("the held exponents are not on the search grid")
    i = int(np.argmin(np.where(keep, wsse, np.inf)))
    if not np.isfinite(wsse[i]):  # no node with a positive bit term: plant the held values with c2 from y anyway
        i = int(np.flatnonzero(keep)[len(np.flatnonzero(keep)) // 2])
    coef = coefficients(design, y, k[i], r[i], b[i])
    coef[2] = max(coef[2], 0.0)
    return {"kappa": float(k[i]), "rho": float(r[i]), "beta": float(b[i]), "coef": coef,
            "mean": predict(design, coef, k[i], r[i], b[i])}
