"""The power of a seed-paired verdict (a gap B − A measured on the same seeds) and the seeds that would decide it.

A paired gap is decided when the 95% t interval of its mean over seeds excludes 0 (QaLoF's gaps, the robustness
gains, two adjacent sensitivity ranks, two backends at one width). With n seeds measured (differences x₁…xₙ), a
plan that adds m seeds is judged by simulation, vectorised over replicates (numpy, no loop over replicates): the m
new differences are drawn, the interval recomputed on all n + m, and the power is the share of replicates whose
interval excludes 0 on the side the gap is planted.

Two ways to plant the new seeds:
- `naive`: at the measured mean and sd, as if they were the truth ("aim exactly at the level"). The measured mean
  of a few seeds is noisy, so a plan that just reaches the level on it decides its gap less often than it says.
- `draws` (the default): each replicate draws its own truth (δ, σ) from the measured seeds' sampling distribution
  (σ² = s²·(n−1)/χ²ₙ₋₁, δ = x̄ + σ·Z/√n: the posterior under the usual flat prior), so the power is an average over
  what the gap might be; the calibration test (tests/unit/analysis/test_plan_calibration.py) shows plans chosen on
  it decide their gap as planted at least as often as the level.
"""

from __future__ import annotations

import math

import numpy as np

from qlbench.analysis.stats import t_quantile

MAX_SEEDS = 32  # the most seeds a plan proposes for one gap
REPLICATES = 2000


def _t975(dof: np.ndarray) -> np.ndarray:
    table = {int(d): t_quantile(0.975, int(d)) for d in np.unique(dof) if d >= 1}
    return np.vectorize(lambda d: table.get(int(d), np.nan), otypes=[float])(dof)


def decided(x: np.ndarray) -> bool:
    """The gap's 95% t interval over the measured seeds excludes 0."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return False
    half = t_quantile(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return bool(abs(x.mean()) > half)


def seeds_needed(x: np.ndarray, level: float, max_seeds: int = MAX_SEEDS, replicates: int = REPLICATES,
                 rng_seed: int = 0, naive: bool = False) -> tuple[int, float]:
    """(seeds to add, power after): the fewest added seeds whose power reaches `level` (up to `max_seeds` in
    all), else the most tried with its power."""
    added, power = plan_many(np.asarray(x, float)[None], level, max_seeds, replicates, rng_seed, naive)
    return int(added[0]), float(power[0])


def plan_many(xs: np.ndarray, level: float, max_seeds: int = MAX_SEEDS, replicates: int = REPLICATES,
              rng_seed: int = 0, naive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For many gaps at once (rows of `xs`, each n ≥ 2 measured differences), vectorised over gaps, replicates and
    added seeds: the seeds each plan adds (the fewest reaching `level`; max_seeds − n where none does) and the
    power there. The m new seeds of a replicate are drawn at its (δ, σ) and the interval recomputed on all n + m."""
    xs = np.asarray(xs, float)
    g, n = xs.shape
    rng = np.random.default_rng(rng_seed)
    mean, sd = xs.mean(axis=1), xs.std(axis=1, ddof=1)
    sign = np.where(mean >= 0, 1.0, -1.0)
    if naive:  # the measured values taken for the truth: aims exactly at the level
        delta, sigma = np.repeat(mean[:, None], replicates, 1), np.repeat(sd[:, None], replicates, 1)
    else:  # each replicate's own truth, drawn from the measured seeds' sampling distribution
        sigma = sd[:, None] * np.sqrt((n - 1) / rng.chisquare(n - 1, (g, replicates)))
        delta = mean[:, None] + sigma * rng.standard_normal((g, replicates)) / math.sqrt(n)
    m_max = max(max_seeds - n, 1)
    new = delta[..., None] + sigma[..., None] * rng.standard_normal((g, replicates, m_max))
    total = n + np.arange(1, m_max + 1)
    s1 = xs.sum(axis=1)[:, None, None] + np.cumsum(new, axis=2)
    s2 = (xs**2).sum(axis=1)[:, None, None] + np.cumsum(new**2, axis=2)
    mu = s1 / total
    var = np.maximum(s2 - total * mu**2, 0.0) / (total - 1)
    half = _t975(total - 1) * np.sqrt(var / total)
    power = np.mean(sign[:, None, None] * mu - half > 0, axis=1)  # gaps × added seeds
    reach = power >= level
    idx = np.where(reach.any(axis=1), reach.argmax(axis=1), m_max - 1)
    return idx + 1, power[np.arange(g), idx]


def final_decided(xs: np.ndarray, added: np.ndarray, delta, sigma, rng_seed: int = 1) -> np.ndarray:
    """Each gap's verdict after its plan's seeds are really run (drawn at its planted δ, σ: scalars or one per
    gap): decided as planted (the interval on all its seeds excludes 0 on δ's side)."""
    xs = np.asarray(xs, float)
    g, n = xs.shape
    added = np.asarray(added, int)
    delta, sigma = (np.broadcast_to(np.asarray(v, float), (g,)) for v in (delta, sigma))
    rng = np.random.default_rng(rng_seed)
    m_max = max(int(added.max()) if len(added) else 0, 1)
    new = delta[:, None] + sigma[:, None] * rng.standard_normal((g, m_max))
    use = np.arange(m_max)[None] < added[:, None]
    total = n + added
    s1 = xs.sum(axis=1) + np.where(use, new, 0).sum(axis=1)
    s2 = (xs**2).sum(axis=1) + np.where(use, new**2, 0).sum(axis=1)
    mu = s1 / total
    var = np.maximum(s2 - total * mu**2, 0.0) / (total - 1)
    half = _t975(total - 1) * np.sqrt(var / total)
    return np.sign(delta) * mu - half > 0


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def power_fresh(x: np.ndarray, replicates: int = REPLICATES, rng_seed: int = 0) -> float:
    """The chance that n fresh seeds (n = the measured count) decide the gap on its measured side, each replicate
    at its own drawn (δ, σ): the power of the grid as it is."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float("nan")
    if x.std(ddof=1) == 0:
        return 1.0
    return _fresh(x, replicates, rng_seed)


def _fresh(x: np.ndarray, replicates: int, rng_seed: int) -> float:
    n = len(x)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    rng = np.random.default_rng(rng_seed)
    sigma = sd * np.sqrt((n - 1) / rng.chisquare(n - 1, replicates))
    delta = mean + sigma * rng.standard_normal(replicates) / math.sqrt(n)
    new = delta[:, None] + sigma[:, None] * rng.standard_normal((replicates, n))
    mu, s = new.mean(axis=1), new.std(axis=1, ddof=1)
    half = t_quantile(0.975, n - 1) * s / math.sqrt(n)
    return float(np.mean(np.sign(mean) * mu - half > 0))
