"""The analyses on synthetic cells whose answer is known."""

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest

from qlbench.analysis import bounds, claims, sensitivity
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


def planted(c1=0.5, c2=3.0, coupled=True, sd=0.002, seeds=4, ranks=(2, 4, 8, 16, 32), examples=(500, 2000, 8000),
            bits=(16, 8, 4, 3, 2), rng=0):
    """Cells whose eval loss follows a planted law: 2 + c1·√(r/N) + c2·(r or 4)·2^(−2b), plus seed noise."""
    g = np.random.default_rng(rng)
    rows = []
    for n in examples:
        for r in ranks:
            for b in bits:
                q = 0.0 if b == 16 else (r if coupled else 4) * 2.0 ** (-2 * b)
                rows += [{"bits": b, "rank": r, "mask": "all", "seed": s, "n_train": n, "train_examples": n,
                          "eval_loss": 2.0 + c1 * math.sqrt(r / n) + c2 * q + g.normal(0, sd)} for s in range(seeds)]
    return cells_from(rows)


def fitted(cells):
    pts = bounds.points(cells)
    return pts, bounds.fit(pts, bounds.fit_cells(cells), boots=200)


def test_bound_fit_over_all_cells_recovers_the_planted_law_and_picks_it():
    cells = planted()
    pts, fits = fitted(cells)
    assert (pts["bits"] == 16).sum() == 15  # the 16-bit cells are fitted too: without them c1 cannot be seen
    best = bounds.supported(fits)
    assert best["form"] == "bound"
    assert best["c1"] == pytest.approx(0.5, rel=0.10) and best["c2"] == pytest.approx(3.0, rel=0.10)
    assert best["L_star"] == pytest.approx(2.0, abs=0.005)
    assert best["c1_lo"] <= 0.5 <= best["c1_hi"] and best["c2_lo"] <= 3.0 <= best["c2_hi"]
    assert best["ci_method"].startswith("bootstrap over seeds")
    assert best["r2"] > 0.999 and best["loo_rmse"] < 0.005
    rivals = fits.filter(~pl.col("form").is_in(["bound", "free"]))  # `free` nests the bound (κ = 2, ρ = 1 is a node)
    assert (rivals["delta_aicc"] > 10).all()  # every rival clearly worse
    free = fits.filter(pl.col("form") == "free").row(0, named=True)
    assert free["delta_aicc"] > 0 and (free["kappa"], free["rho"], free["beta"]) == (2.0, 1.0, 0.0)
    exps = {r["exponent"]: r for r in claims.exponents(pts).iter_rows(named=True)}
    assert exps["kappa"]["ci_lo"] <= 2.0 <= exps["kappa"]["ci_hi"]
    assert exps["rho"]["ci_lo"] <= 1.0 <= exps["rho"]["ci_hi"]
    verdict = _verdicts(cells, pts, fits)
    assert verdict["rank–precision coupling"] == "supported"
    assert verdict["exponential bit scaling"] == "supported"
    assert verdict["b* rule"] == "supported"  # ρ/κ = ½ bit per doubling of r
    # at a fixed tolerance the bound's terms give 0 bits per doubling of N, measured from cells of three N
    n_row = verdict["rows"].filter(pl.col("claim").str.contains("log₂ N")).row(0, named=True)
    assert abs(n_row["measured"]) < 0.07 and verdict["b* rule N"] == "not supported"


def test_coefficient_intervals_cover_the_planted_values_at_their_nominal_rate():
    # 4 seeds: a plain percentile bootstrap over seeds covers c1 in about 60% of replicates; the t-widened
    # interval in about 95%. Twenty fixed replicates: at least 16 must cover both c1 and c2 (percentile: 13).
    covered = 0
    for rng in range(20):
        cells = planted(rng=rng)
        best = bounds.supported(bounds.fit(bounds.points(cells), bounds.fit_cells(cells), boots=200, free=False))
        covered += best["c1_lo"] <= 0.5 <= best["c1_hi"] and best["c2_lo"] <= 3.0 <= best["c2_hi"]
    assert covered >= 16


def _verdicts(cells, pts, fits):
    from qlbench.analysis import power

    table = bounds.rank_precision(bounds.gaps(cells), 0.01)
    grad = claims.grad_var_scaling(cells)
    v = claims.verdicts(pts, fits, grad, table, power.claim_powers(pts, grad, replicates=100))
    return {row["claim"].split(":")[0] + (" N" if "log₂ N" in row["claim"] else ""): row["verdict"]
            for row in v.iter_rows(named=True)} | {"rows": v}


def test_without_rank_coupling_the_coupling_is_not_supported():
    cells = planted(coupled=False)
    pts, fits = fitted(cells)
    best = bounds.supported(fits)
    assert best["form"] == "no_rank_coupling"
    assert best["c2"] == pytest.approx(3.0 * 4, rel=0.10) and best["c1"] == pytest.approx(0.5, rel=0.10)
    verdict = _verdicts(cells, pts, fits)
    assert verdict["rank–precision coupling"] == "not supported"
    assert verdict["b* rule"] == "not supported"
    assert verdict["exponential bit scaling"] == "supported"


def test_cells_without_gradient_variance_nan_fit_without_the_grad_var_form():
    cells = planted().with_columns(pl.lit(float("nan")).alias("grad_var_mean"))  # how unmeasured cells store it
    pts, fits = fitted(cells)
    assert "bound_grad_var" not in fits["form"].to_list() and bounds.supported(fits)["form"] == "bound"
    assert claims.grad_var_scaling(cells).is_empty()


def test_one_rank_makes_the_coupling_not_testable():
    cells = planted(ranks=(8,), examples=(1000,))
    pts, fits = fitted(cells)
    assert _verdicts(cells, pts, fits)["rank–precision coupling"] == "not testable"


def test_points_weigh_each_mean_by_its_seed_variance_floored_at_the_median():
    rows = [{"bits": b, "rank": 4, "mask": "all", "seed": s, "eval_loss": v}
            for b, vals in ((16, (2.0, 2.2)), (8, (2.0, 2.02)), (4, (2.1, 2.5)), (2, (3.0, 3.0)))
            for s, v in enumerate(vals)]
    pts = bounds.points(cells_from(rows)).sort("bits")
    # variances 0 (2 bits), 0.08 (4), 0.0002 (8), 0.02 (16): median 0.0101 floors the 2- and 8-bit points
    assert pts["var"].to_list() == pytest.approx([0.0, 0.08, 0.0002, 0.02])
    assert pts["weight"].to_list() == pytest.approx([2 / 0.0101, 2 / 0.08, 2 / 0.0101, 2 / 0.02])


def test_grad_var_slopes_are_recovered_with_intervals_that_cover_them():
    g = np.random.default_rng(1)
    rows = []
    for r in (4, 8, 16, 32):
        for seed in range(3):
            rows.append({"bits": 16, "rank": r, "mask": "all", "seed": seed, "eval_loss": 2.0, "grad_var_mean": 1.0})
            rows += [{"bits": b, "rank": r, "mask": "all", "seed": seed, "eval_loss": 2.1,
                      "grad_var_mean": 1.0 + 50.0 * r * 2.0 ** (-2 * b) * math.exp(g.normal(0, 0.1))}
                     for b in (2, 3, 4, 6)]
    slopes = {s["term"]: s for s in claims.grad_var_scaling(cells_from(rows)).iter_rows(named=True)}
    for term, truth in (("log2_rank", 1.0), ("bits", -2.0)):
        s = slopes[term]
        assert s["ci_lo"] < truth < s["ci_hi"] and s["measured_slope"] == pytest.approx(truth, abs=0.05)
        assert s["ci_hi"] - s["ci_lo"] < 0.2 and s["predicted_slope"] == truth  # an interval that could miss


def test_t_quantiles_match_the_tables():
    from qlbench.analysis.stats import t_quantile

    for df, t in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)


def test_nnls_keeps_coefficients_non_negative():
    x = np.column_stack([np.ones(5), np.arange(5.0)])
    y = 3.0 - 0.5 * np.arange(5.0)  # the unconstrained slope would be negative
    coef = bounds.nnls(x, y)
    assert coef[1] == 0 and coef[0] == pytest.approx(y.mean())


def test_b_star_values_from_each_form():
    bound = {"form": "bound", "c1": 0.5, "c2": 1.0}
    table = bounds.b_star(bound, [4, 8, 16], [1000], 0.01)
    # ½·log₂(c2·r/ε) = ½·log₂(400), ½·log₂(800), ½·log₂(1600)
    assert table["b_star_exact"].to_list() == pytest.approx([4.321928, 4.821928, 5.321928], abs=1e-6)
    assert table["b_star"].to_list() == [5, 5, 6]
    # ½·log₂(c2·r/(c1·√(r/N))) at r = 4, N = 1000
    assert table["b_star_vs_sqrt"][0] == pytest.approx(3.491446, abs=1e-6)
    flat = bounds.b_star({"form": "no_rank_coupling", "c1": 0.5, "c2": 1.0}, [4, 16], [1000], 0.01)
    assert flat["b_star_exact"].to_list() == pytest.approx([3.321928, 3.321928], abs=1e-6)
    none = bounds.b_star({"form": "no_bit_term", "c1": 0.5, "c2": None}, [4], [1000], 0.01)
    assert none["b_star"].to_list() == [2] and none["b_star_exact"][0] == float("-inf")


def test_sensitivity_ranks_blocks_with_exact_intervals_and_a_seed_swap():
    hurt = {"b0": 0.30, "b1": 0.02, "b2": 0.10, "b3": 0.01}
    rows = []
    for seed in (0, 1, 2):
        rows.append({"bits": 4, "rank": 8, "mask": "none", "seed": seed, "eval_loss": 2.0})
        for m, d in hurt.items():
            d = {"b1": 0.01, "b3": 0.02}.get(m, d) if seed == 2 else d  # seed 2 swaps b1 and b3
            rows.append({"bits": 4, "rank": 8, "mask": m, "seed": seed,
                         "eval_loss": 2.0 + d + (0.01 * (seed - 1) if m == "b0" else 0.0)})
    ranked = sensitivity.ranking(cells_from(rows))
    assert ranked.sort("rank_measured")["mask"].to_list() == ["b0", "b2", "b1", "b3"]
    # pairwise Spearman: seeds 0,1 agree (1); each against seed 2: ranks differ by 1 at two masks,
    # 1 − 6·2/(4·15) = 0.8; mean (1 + 0.8 + 0.8)/3
    assert ranked["rank_stability"][0] == pytest.approx(2.6 / 3, abs=1e-12)
    b0 = ranked.filter(pl.col("mask") == "b0").row(0, named=True)
    # 0.29, 0.30, 0.31: sd 0.01, t(0.975, 2) = 4.302653: 4.302653·0.01/√3
    assert b0["degradation"] == pytest.approx(0.30) and b0["ci95"] == pytest.approx(0.0248414, abs=1e-7)
    b2 = ranked.filter(pl.col("mask") == "b2").row(0, named=True)
    assert b2["ci95"] == pytest.approx(0.0, abs=1e-12) and ranked["seeds"].to_list() == [3] * 4
    rec = sensitivity.recommend(ranked, 0.5)
    assert rec["mask"].to_list() == ["b1+b3"] and rec["predicted_degradation"][0] == pytest.approx(0.03, abs=1e-12)


def test_one_pass_estimates_are_summed_per_mask_and_compared_by_rank():
    ranked = pl.DataFrame({"model": ["m"] * 4, "n_train": [None] * 4, "rank": [8] * 4, "bits": [4] * 4,
                           "level": ["block"] * 4, "mask": ["b0", "b1", "b2", "b3"],
                           "degradation": [0.4, 0.3, 0.2, 0.1], "rank_measured": [1, 2, 3, 4]},
                          schema_overrides={"n_train": pl.Int64})
    estimates = {0: (2.0, 1.0), 1: (2.5, 1.0), 2: (0.5, 0.6), 3: (0.1, 0.2)}  # sums 3.0, 3.5, 1.1, 0.3
    probes = pl.DataFrame({"model": ["m"] * 8, "n_train": [None] * 8, "rank": [8] * 8, "seed": [0] * 8,
                           "module": [f"transformer.h.{b}.{m}" for b in range(4) for m in ("attn.c_attn", "mlp.c_fc")],
                           "estimate": [e for b in range(4) for e in estimates[b]],
                           "hessian_estimate": [e for b in range(4) for e in (4.0 - b, 0.0)]},  # ranks 1..4
                          schema_overrides={"n_train": pl.Int64})
    out = sensitivity.with_estimates(ranked, probes).sort("mask")
    assert out["hessian_spearman"][0] == pytest.approx(1.0) and out["hessian_p"][0] == pytest.approx(1 / 24)
    assert out["estimate"].to_list() == pytest.approx([3.0, 3.5, 1.1, 0.3])
    # estimated ranks 2, 1, 3, 4 against measured 1, 2, 3, 4: ρ = 1 − 6·(1 + 1)/(4·(16 − 1)) = 0.8
    assert out["rank_estimated"].to_list() == [2, 1, 3, 4]
    assert out["estimate_spearman"][0] == pytest.approx(0.8, abs=1e-12)
    # over 4 masks, 4 of the 24 pairings reach ρ ≥ 0.8 (ρ = 1 once, 0.8 three times): the null probability is 1/6
    assert out["estimate_p"][0] == pytest.approx(1 / 6) and out["estimate_ci_lo"][0] < 0 < out["estimate_ci_hi"][0]


def test_spearman_permutation_p_is_exact_for_small_n_and_close_for_large():
    from qlbench.analysis.stats import spearman_test

    t = spearman_test([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert t["rho"] == pytest.approx(1.0) and t["p"] == pytest.approx(1 / 120) and t["exact"]
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    t = spearman_test(a, a + rng.normal(size=30))
    # against the normal approximation of the null, ρ·√(n − 1) ~ N(0, 1)
    z = t["rho"] * math.sqrt(29)
    assert t["p"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), abs=0.01) and not t["exact"]
    assert t["ci_lo"] < t["rho"] < t["ci_hi"]


def _ranked(units: dict[str, dict[int, float]]) -> pl.DataFrame:
    rows = [{"model": "m", "n_train": None, "rank": 8, "bits": w, "level": "module", "mask": u, "degradation": d}
            for u, by_width in units.items() for w, d in by_width.items()]
    return pl.DataFrame(rows, schema_overrides={"n_train": pl.Int64})


def _sizes(numel: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame({"model": ["m"] * len(numel), "mask": list(numel), "numel": list(numel.values())})


def test_bit_budget_matches_brute_force_with_unequal_module_sizes():
    g = np.random.default_rng(3)
    for trial in range(12):
        units = {f"b{i}.mlp.c_fc": {w: float(g.uniform(0, 1)) / w for w in (2, 3, 4)} for i in range(5)}
        numel = {u: int(g.choice([1, 2, 4, 9])) * 1000 for u in units}
        budget = float(g.uniform(3.0, 7.5))
        rec = sensitivity.recommend_bits(_ranked(units), _sizes(numel), budget, 8).row(0, named=True)
        best = min(
            (sum(units[u].get(w, 0.0) for u, w in zip(units, choice)), choice)
            for choice in itertools.product((2, 3, 4, 8), repeat=len(units))
            if sum(numel[u] * w for u, w in zip(units, choice)) <= budget * sum(numel.values()))
        assert rec["solver"] == "Optimal"
        assert rec["predicted_degradation"] == pytest.approx(best[0], abs=1e-9), trial
        chosen = json.loads(rec["bit_map"])
        assert sum(numel[u] * w for u, w in chosen.items()) <= budget * sum(numel.values()) + 1e-6
        assert rec["avg_bits"] <= budget + 1e-9


def test_count_budget_and_bit_budget_differ_when_module_sizes_differ():
    units = {"b0.attn.c_proj": {4: 0.002}, "b1.attn.c_proj": {4: 0.003},
             "b0.mlp.c_fc": {4: 0.010}, "b1.mlp.c_fc": {4: 0.011}}
    numel = {"b0.attn.c_proj": 1_000_000, "b1.attn.c_proj": 1_000_000, "b0.mlp.c_fc": 4_000_000,
             "b1.mlp.c_fc": 4_000_000}
    ranked = _ranked(units)
    by_count = sensitivity.recommend(ranked, 0.5).row(0, named=True)
    assert by_count["mask"] == "b0.attn.c_proj+b1.attn.c_proj"  # the two least sensitive: 7.2 bits per weight
    by_bits = sensitivity.recommend_bits(ranked, _sizes(numel), 6.0, 8).row(0, named=True)
    # ≤ 6·10M = 60M bit·weights (all at 8: 80M). Both c_proj to 4 bits save only 8M; a c_fc saves 16M, so the
    # cheapest feasible choice is b0.mlp.c_fc + b0.attn.c_proj: 80 − 16 − 4 = 60M, cost 0.010 + 0.002
    assert by_bits["mask"] == "b0.mlp.c_fc+b0.attn.c_proj"
    assert by_bits["avg_bits"] == pytest.approx(6.0) and by_bits["predicted_degradation"] == pytest.approx(0.012)
    assert by_bits["bits"] == 4 and by_bits["runnable"]


def test_sizes_sum_modules_into_blocks():
    probes = pl.DataFrame({"model": ["m"] * 4, "seed": [0, 0, 1, 1],
                           "module": ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"] * 2,
                           "numel": [3, 4, 3, 4]})
    got = {r["mask"]: r["numel"] for r in sensitivity.sizes(probes).iter_rows(named=True)}
    assert got == {"b0.attn.c_attn": 3, "b0.mlp.c_fc": 4, "b0": 7}


def test_qlbench_bounds_on_planted_cells_writes_fits_verdicts_and_the_noise_check(tmp_path):
    from click.testing import CliRunner

    from qlbench.cli import main

    planted().with_columns(pl.lit("syn").alias("study"), pl.lit("ok").alias("status")).write_parquet(
        tmp_path / "cells.parquet")
    result = CliRunner().invoke(main, ["bounds", str(tmp_path / "cells.parquet"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "supported form bound" in result.output
    best = pl.read_parquet(tmp_path / "b/fits.parquet").filter(pl.col("supported")).row(0, named=True)
    assert best["c1"] == pytest.approx(0.5, rel=0.1) and best["c2"] == pytest.approx(3.0, rel=0.1)
    verdicts = pl.read_parquet(tmp_path / "b/verdicts.parquet")
    coupling = verdicts.filter(pl.col("claim").str.starts_with("rank–precision")).row(0, named=True)
    assert coupling["verdict"] == "supported" and "supported" in (tmp_path / "b/verdicts.md").read_text()
    noise = pl.read_parquet(tmp_path / "b/noise_check.parquet")  # no adapters here: the Gaussian stand-in
    assert noise.filter((pl.col("quantizer") == "int") & (pl.col("bits") == 8))["holds"].all()
    for name in ("bounds.png", "gaps.png", "noise_check.png", "fits.md", "bstar.md"):
        assert (tmp_path / "b" / name).stat().st_size > 0


def test_qlbench_sensitivity_budget_bits_solves_per_module_widths(tmp_path):
    from click.testing import CliRunner

    from qlbench.cli import main

    hurt = {"b0.attn.c_proj": 0.002, "b1.attn.c_proj": 0.003, "b0.mlp.c_fc": 0.010, "b1.mlp.c_fc": 0.011}
    numel = {"attn.c_proj": 1_000_000, "mlp.c_fc": 4_000_000}
    rows = []
    for seed in (0, 1):
        rows.append({"bits": 4, "rank": 8, "mask": "none", "seed": seed, "eval_loss": 2.0})
        rows += [{"bits": 4, "rank": 8, "mask": m, "seed": seed, "eval_loss": 2.0 + d} for m, d in hurt.items()]
    cells_from(rows).with_columns(pl.lit("syn").alias("study"), pl.lit(8).alias("high_bits")).write_parquet(
        tmp_path / "cells.parquet")
    pl.DataFrame([{"model": "m", "n_train": None, "rank": 8, "seed": s, "mask": "none",
                   "module": f"transformer.h.{b}.{mod}", "estimate": 1.0, "numel": n}
                  for s in (0, 1) for b in (0, 1) for mod, n in numel.items()],
                 schema_overrides={"n_train": pl.Int64}).write_parquet(tmp_path / "probes.parquet")
    result = CliRunner().invoke(main, ["sensitivity", str(tmp_path / "cells.parquet"), "--out", str(tmp_path / "s"),
                                       "--budget-bits", "6"])
    assert result.exit_code == 0, result.output
    rec = pl.read_parquet(tmp_path / "s/recommendation.parquet").row(0, named=True)
    assert rec["mask"] == "b0.mlp.c_fc+b0.attn.c_proj" and rec["avg_bits"] == pytest.approx(6.0)
    assert rec["solver"] == "Optimal" and (tmp_path / "s/recommendation.html").exists()


def test_a_coefficient_at_its_bound_is_reported_as_such_with_a_one_sided_interval():
    # the 16-bit loss falls with rank (as in the demo): the bound's c1 ≥ 0 sits at 0
    g = np.random.default_rng(0)
    rows = [{"bits": b, "rank": r, "mask": "all", "seed": s,
             "eval_loss": 2.2 - 0.01 * math.log2(r) + (0 if b == 16 else 3.0 * r * 2.0 ** (-2 * b)) + g.normal(0, 0.002)}
            for r in (4, 8, 16) for b in (16, 8, 4, 3) for s in range(3)]
    cells = cells_from(rows)
    fits = bounds.fit(bounds.points(cells), bounds.fit_cells(cells), boots=100, free=False)
    bound = fits.filter(pl.col("form") == "bound").row(0, named=True)
    assert bound["c1"] == 0.0 and bound["c1_at_bound"] and bound["c1_lo"] == 0.0 and bound["c1_hi"] > 0
    trend = fits.filter(pl.col("form") == "rank_trend").row(0, named=True)
    assert trend["a"] == pytest.approx(-0.01, abs=0.003) and not trend["a_at_bound"]  # a trend may fall
    from qlbench.analysis.declared.bounds import fits_view

    view = fits_view(fits).filter(pl.col("form") == "bound").row(0, named=True)
    assert view["c1"].startswith("0 (at bound), one-sided 95% ≤ ")
