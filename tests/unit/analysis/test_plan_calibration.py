"""Plans that keep their promise: over many planted draws, the plans that promise the level decide their verdict as
planted at least that often, once their cells are run and the verdict refitted — and the plan that takes the
measured values for the truth (aiming exactly at the level) does not."""

import time

import numpy as np
import pytest

from qlbench.analysis import seed_power

LEVEL = 0.8


def paired_gap_calibration(naive: bool, draws: int = 1500, seeds: int = 3, spread: float = 2.0, rng_seed: int = 7):
    """Plant `draws` gaps (δ uniform in ±spread·σ, σ = 1: a population of studies whose gaps are wide compared
    with their seeds' spread), measure each on `seeds` seeds, plan, run the plan's seeds, decide again. Returns
    (plans that promised the level, of them decided as planted)."""
    rng = np.random.default_rng(rng_seed)
    delta = rng.uniform(-spread, spread, draws)
    xs = delta[:, None] + rng.standard_normal((draws, seeds))
    added, power = seed_power.plan_many(xs, LEVEL, replicates=300, naive=naive)
    promised = power >= LEVEL
    ok = seed_power.final_decided(xs[promised], added[promised], delta[promised], 1.0)
    return int(promised.sum()), int(ok.sum())


def test_seed_plans_of_paired_gaps_decide_as_planted_at_least_at_the_level():
    t0 = time.process_time()
    plans, ok = paired_gap_calibration(naive=False)
    lo, hi = seed_power.wilson(ok, plans)
    print(f"paired gaps, nuisance draws: {ok}/{plans} = {ok / plans:.3f} decided as planted (Wilson 95% {lo:.3f}–{hi:.3f})")
    assert plans > 500 and ok / plans >= LEVEL  # the point estimate at the level; its interval printed
    assert time.process_time() - t0 < 30


def test_seed_plans_aimed_exactly_at_the_level_under_deliver():
    plans, ok = paired_gap_calibration(naive=True)
    lo, hi = seed_power.wilson(ok, plans)
    print(f"paired gaps, naive: {ok}/{plans} = {ok / plans:.3f} decided as planted (Wilson 95% {lo:.3f}–{hi:.3f})")
    assert plans > 500 and hi < LEVEL  # the whole interval below the level: reliably short of its promise


# The bounds claims: the bound planted (κ = 2, ρ = 1), its seed noise drawn per study (sd log-uniform in SDS nats:
# with 2 seeds ρ = 1 is mostly undecided, and 3-16 seeds decide it for most), measured on bits 16/8/4/3 × ranks
# 4, 16 with 2 seeds; the plan may add seeds (3-16); the plan's seeds are run (the same noise stream, so the 2
# measured seeds stay) and the verdict's own test decides ρ again on the fine grid. Regenerate the figures of
# docs/studies/bounds.md: pytest tests/unit/analysis/test_plan_calibration.py -m slow -s -p no:cacheprovider
BITS, RANKS, N, SDS, MAX_SEEDS = (16, 8, 4, 3), (4, 16), 1000, (0.05, 0.13), 16
ADDITIONS = [(f"seeds {k}", {"bits": sorted(BITS), "ranks": list(RANKS), "examples": [N], "seeds": k})
             for k in range(3, MAX_SEEDS + 1)]


def _cells(noise, seeds):
    import polars as pl

    law = lambda r, b: 2.0 + 0.5 * (r / N) ** 0.5 + 3.0 * r * (0 if b >= 16 else 2.0 ** (-2 * b))
    return pl.DataFrame([{"model": "m", "n_train": N, "train_examples": N, "status": "ok", "mask": "all", "bits": b,
                          "rank": r, "seed": s, "eval_loss": law(r, b) + noise[i, j, s]}
                         for i, r in enumerate(RANKS) for j, b in enumerate(BITS) for s in range(seeds)])


def bounds_calibration(studies, draws: int, replicates: int = 100, sds=SDS) -> tuple[int, int]:
    """(plans that promised the level for ρ = 1, of them decided as planted after their seeds ran); studies whose
    verdict power is at the level already ("none needed") or that no tried addition brings to the aim are not plans."""
    from qlbench.analysis import bounds, claims, freefit, plan

    promised = decided = 0
    for m in studies:
        g = np.random.default_rng(100 + m)
        sd = float(np.exp(g.uniform(np.log(sds[0]), np.log(sds[1]))))
        noise = g.normal(0, sd, (len(RANKS), len(BITS), MAX_SEEDS))
        row = plan.plan(bounds.points(_cells(noise, 2)), None, LEVEL, replicates, draws=draws, only=("rho",),
                        additions=ADDITIONS).row(0, named=True)
        if row["addition"] == "none needed" or "best tried" in row["addition"]:
            continue
        promised += 1
        after = bounds.points(_cells(noise, int(row["addition"].split()[1])))
        d = bounds.design_of(after)
        got = claims.decide(d, after["loss"].to_numpy(), freefit.grid_for(d), None)
        decided += bool(claims.interval_correct(got["rho_lo"], got["rho_hi"], got["rho_edge"], 1.0, 0.0)[0][0])
    return promised, decided


def test_bounds_plans_keep_their_promise_fast():
    # FAST_STUDIES planted studies: too few to bound the fraction tightly; the assertion is that the plan promised
    # something and that the level lies within the Wilson interval's reach (its upper bound)
    t0 = time.process_time()  # CPU seconds: the machine's cores are shared, its wall clock is not ours
    plans, ok = bounds_calibration(range(200, 200 + FAST_STUDIES), plan_draws())
    lo, hi = seed_power.wilson(ok, plans)
    print(f"bounds ρ = 1 (fast): {ok}/{plans} decided as planted (Wilson 95% {lo:.3f}–{hi:.3f})")
    assert plans >= 3 and hi >= LEVEL
    assert time.process_time() - t0 < 60


FAST_STUDIES = 8
SLOW = 25  # planted studies 200.. and 300.. of each stream (the CPU of a few minutes)
SLOW_STUDIES = [*range(200, 200 + SLOW), *range(300, 300 + SLOW)]


@pytest.mark.slow
def test_bounds_plans_keep_their_promise():
    plans, ok = bounds_calibration(SLOW_STUDIES, plan_draws())
    lo, hi = seed_power.wilson(ok, plans)
    print(f"bounds ρ = 1, nuisance draws: {ok}/{plans} = {ok / plans:.3f} decided as planted (Wilson 95% {lo:.3f}–{hi:.3f})")
    assert plans >= 15 and ok / plans >= LEVEL  # the point estimate at the level; its interval printed


@pytest.mark.slow
def test_bounds_plans_aimed_exactly_at_the_level_fall_short():
    # the fitted values taken for the truth, the power estimated from as many data sets (400) and the first addition
    # reaching the level chosen: the same population decides as planted less often than the level (point estimate;
    # its interval still reaches the level at this count, so this is not a reliable shortfall: see bounds.md)
    plans, ok = bounds_calibration(SLOW_STUDIES, 0, replicates=400)
    lo, hi = seed_power.wilson(ok, plans)
    print(f"bounds ρ = 1, naive: {ok}/{plans} = {ok / plans:.3f} decided as planted (Wilson 95% {lo:.3f}–{hi:.3f})")
    assert plans >= 15 and ok / plans < LEVEL


def plan_draws() -> int:
    from qlbench.analysis import plan

    return plan.DRAWS
