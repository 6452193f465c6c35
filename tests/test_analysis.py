"""The analyses on synthetic cells whose answer is known."""

import math

import numpy as np
import polars as pl
import pytest

from qlbench.analysis import bounds, sensitivity
from qlbench.analysis.pairs import with_reference


def cells_from(rows):
    base = {"model": "m", "n_train": None, "train_examples": 1000, "status": "ok"}
    return pl.DataFrame([{**base, **r} for r in rows], schema_overrides={"n_train": pl.Int64})


def test_pairs_use_the_none_mask_at_the_same_bits_before_16_bits():
    cells = cells_from([
        {"bits": 16, "rank": 4, "mask": "none", "seed": 0, "eval_loss": 2.0},
        {"bits": 4, "rank": 4, "mask": "none", "seed": 0, "eval_loss": 2.1},
        {"bits": 4, "rank": 4, "mask": "b0", "seed": 0, "eval_loss": 2.4},
        {"bits": 3, "rank": 4, "mask": "b0", "seed": 0, "eval_loss": 2.9},
    ])
    paired = with_reference(cells).sort("bits")
    assert paired["ref_eval_loss"].to_list() == [2.0, 2.1]
    assert paired["delta_eval_loss"].to_list() == pytest.approx([0.9, 0.3])


def test_bound_fit_recovers_known_coefficients():
    rows = []
    for r in (2, 4, 8, 16, 32):
        for b in (2, 3, 4, 8):
            gap = 0.01 + 0.5 * math.sqrt(r / 1000) + 3.0 * r * 2.0 ** (-2 * b)
            rows += [{"bits": 16, "rank": r, "mask": "none", "seed": 0, "eval_loss": 2.0},
                     {"bits": b, "rank": r, "mask": "all", "seed": 0, "eval_loss": 2.0 + gap}]
    fits = bounds.fit(bounds.gaps(cells_from(rows).unique())).sort("model")
    full = fits.filter(pl.col("model") == "full").row(0, named=True)
    assert full["c0"] == pytest.approx(0.01, abs=1e-9) and full["c1"] == pytest.approx(0.5)
    assert full["c2"] == pytest.approx(3.0) and full["r2"] == pytest.approx(1.0)
    assert full["loo_rmse"] < 1e-9
    worse = fits.filter(pl.col("model") != "full")
    assert (worse["rmse"] > 0.01).all()  # the simpler models cannot explain it


def test_nnls_keeps_coefficients_non_negative():
    x = np.column_stack([np.ones(5), np.arange(5.0)])
    y = 3.0 - 0.5 * np.arange(5.0)  # the unconstrained slope would be negative
    coef = bounds.nnls(x, y)
    assert coef[1] == 0 and coef[0] == pytest.approx(y.mean())


def test_b_star_grows_by_half_a_bit_per_doubling_of_rank():
    table = bounds.b_star(1.0, [4, 8, 16], 0.01)
    exact = table["b_star_exact"].to_list()
    assert exact[1] - exact[0] == pytest.approx(0.5) and exact[2] - exact[1] == pytest.approx(0.5)
    assert table["b_star"].to_list() == [math.ceil(e) for e in exact]


def test_noise_simulation_matches_the_uniform_model():
    sim = bounds.simulate_noise(ranks=(4, 16), bits=(2, 4), trials=4)
    assert sim["ratio"].is_between(0.9, 1.1).all()
    assert (sim.filter(pl.col("bits") == 2)["measured"] > sim.filter(pl.col("bits") == 4)["measured"]).all()


def test_sensitivity_ranks_blocks_and_recommends_the_least_sensitive():
    hurt = {"b0": 0.30, "b1": 0.02, "b2": 0.10, "b3": 0.01}
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.001), (2, -0.001)):
        rows.append({"bits": 4, "rank": 8, "mask": "none", "seed": seed, "eval_loss": 2.0})
        rows += [{"bits": 4, "rank": 8, "mask": m, "seed": seed, "eval_loss": 2.0 + d + noise * (i + 1)}
                 for i, (m, d) in enumerate(hurt.items())]
    ranked = sensitivity.ranking(cells_from(rows))
    assert ranked.sort("rank_measured")["mask"].to_list() == ["b0", "b2", "b1", "b3"]
    assert ranked["rank_stability"].to_list() == pytest.approx([1.0] * 4)
    assert (ranked["ci95"] > 0).all() and ranked["seeds"].to_list() == [3] * 4
    rec = sensitivity.recommend(ranked, 0.5)
    assert rec["mask"].to_list() == ["b1+b3"] and rec["predicted_degradation"][0] == pytest.approx(0.03, abs=0.01)


def test_one_pass_estimates_are_summed_per_mask_and_compared_by_rank():
    ranked = pl.DataFrame({"model": ["m"] * 3, "n_train": [None] * 3, "rank": [8] * 3, "bits": [4] * 3,
                           "level": ["block"] * 3, "mask": ["b0", "b1", "b2"], "degradation": [0.3, 0.1, 0.2],
                           "rank_measured": [1, 3, 2]}, schema_overrides={"n_train": pl.Int64})
    probes = pl.DataFrame({"model": ["m"] * 6, "n_train": [None] * 6, "rank": [8] * 6, "seed": [0] * 6,
                           "module": [f"transformer.h.{b}.{m}" for b in range(3) for m in ("attn.c_attn", "mlp.c_fc")],
                           "estimate": [2.0, 1.0, 0.1, 0.2, 0.5, 0.6]}, schema_overrides={"n_train": pl.Int64})
    out = sensitivity.with_estimates(ranked, probes).sort("mask")
    assert out["estimate"].to_list() == pytest.approx([3.0, 0.3, 1.1])
    assert out["rank_estimated"].to_list() == [1, 3, 2] and out["estimate_spearman"][0] == pytest.approx(1.0)
