"""Verdicts that know their power: planted truths on named grids, decided (or not) as the grid allows."""

import json
import math
import time

import numpy as np
import polars as pl
import pytest

from qlbench.analysis import bounds, claims, freefit, plan, power


def cells_of(law, bits, ranks, examples, seeds, sd, rng=0):
    """Cells of mask `all` whose eval loss is law(r, b, N) plus seed noise of sd `sd`."""
    g = np.random.default_rng(rng)
    rows = [{"model": "m", "n_train": n, "train_examples": n, "status": "ok", "mask": "all", "bits": b, "rank": r,
             "seed": s, "eval_loss": law(r, b, n) + g.normal(0, sd)}
            for n in examples for r in ranks for b in bits for s in range(seeds)]
    return pl.DataFrame(rows, schema_overrides={"n_train": pl.Int64})


def bit(b, kappa):
    return 0.0 if b >= 16 else 2.0 ** (-kappa * b)


def analyse(cells):
    pts = bounds.points(cells)
    fits = bounds.fit(pts, bounds.fit_cells(cells), boots=200)
    grad = claims.grad_var_scaling(cells)
    powers = power.claim_powers(pts, grad)
    table = bounds.rank_precision(bounds.gaps(cells), 0.01)
    v = claims.verdicts(pts, fits, grad, table, powers)
    rows = {r["claim"].split(":")[0].split(" (")[0] + (" N" if "log₂ N" in r["claim"] else ""): r
            for r in v.iter_rows(named=True)}
    return fits, rows


KAPPA3 = lambda r, b, n: 2.0 + 0.3 * math.sqrt(r / n) + 6.4 * r * bit(b, 3.0)


def test_kappa_3_on_the_bounds_projects_grid_is_undecided_not_supported_as_2():
    # bits 16/8/4, ranks 4-32, 3 seeds, one N: two quantized widths, and 8 bits shows nothing at κ = 3
    cells = cells_of(KAPPA3, (16, 8, 4), (4, 8, 16, 32), (1000,), 3, 0.003)
    _, v = analyse(cells)
    kappa = v["exponential bit scaling"]
    assert kappa["verdict"] == "undecided (grid)"
    assert kappa["power"] < claims.POWER_LEVEL and kappa["rival"] in (3.0, 4.0, 5.0, 1.0)


def test_kappa_3_on_widths_3_to_8_is_not_supported_as_2_with_power():
    cells = cells_of(KAPPA3, (16, 8, 7, 6, 5, 4, 3), (4, 8, 16, 32), (1000,), 3, 0.003)
    _, v = analyse(cells)
    kappa = v["exponential bit scaling"]
    assert kappa["verdict"] == "not supported", kappa
    assert kappa["rival"] == 3.0 and kappa["power"] >= 0.8
    assert kappa["ci_lo"] <= 3.0 <= kappa["ci_hi"] and kappa["ci_lo"] > 2.0


def test_an_n_independent_rank_trend_does_not_choose_the_bounds_form():
    # c1 = 0; the loss rises 0.03 nats per doubling of r whatever N (two N that change nothing)
    law = lambda r, b, n: 2.0 + 0.03 * math.log2(r) + 3.0 * r * bit(b, 2.0)
    cells = cells_of(law, (16, 8, 4, 3, 2), (4, 8, 16, 32), (500, 2000), 2, 0.002)
    fits, v = analyse(cells)
    best = bounds.supported(fits)
    assert best["form"] not in ("bound", "bound_grad_var"), fits.select("form", "c1", "aicc", "delta_aicc")
    assert best["form"] == "rank_trend" and best["a"] == pytest.approx(0.03, rel=0.1)
    assert v["generalisation term c1·√(r/N) > 0"]["verdict"] != "supported"


def test_a_planted_bound_on_a_rich_grid_is_recovered_and_supported():
    law = lambda r, b, n: 2.0 + 0.5 * math.sqrt(r / n) + 3.0 * r * bit(b, 2.0)
    cells = cells_of(law, (16, 8, 4, 3, 2), (2, 4, 8, 16, 32), (500, 2000, 8000), 4, 0.002)
    t0 = time.perf_counter()
    fits, v = analyse(cells)
    assert time.perf_counter() - t0 < 60  # the whole analysis, power included, vectorised
    best = bounds.supported(fits)
    assert best["form"] == "bound"
    assert best["c1"] == pytest.approx(0.5, rel=0.1) and best["c2"] == pytest.approx(3.0, rel=0.1)
    for claim in ("exponential bit scaling", "rank–precision coupling", "generalisation term c1·√(r/N) > 0",
                  "b* rule"):
        assert v[claim]["verdict"] == "supported", (claim, v[claim])
        assert v[claim]["power"] >= 0.8
    # the bound's own terms give no bits per doubling of N at a fixed tolerance: the paper's ½ is rejected
    assert v["b* rule N"]["verdict"] == "not supported" and abs(v["b* rule N"]["measured"]) < 0.1


def test_half_a_bit_per_doubling_of_n_is_found_from_cells_of_three_n():
    n0 = 2000.0
    law = lambda r, b, n: 2.0 + 0.5 * math.sqrt(r / n) + 3.0 * r * (n / n0) * bit(b, 2.0)
    cells = cells_of(law, (16, 8, 4, 3, 2), (4, 8, 16, 32), (500, 2000, 8000), 3, 0.002)
    fits, v = analyse(cells)
    row = v["b* rule N"]
    assert row["verdict"] == "supported" and row["measured"] == pytest.approx(0.5, abs=0.07)
    assert row["ci_lo"] > 0 and row["power"] >= 0.8
    free = fits.filter(pl.col("form") == "free").row(0, named=True)
    assert free["supported"] and free["beta"] == pytest.approx(0.5, abs=0.07)
    bstar = bounds.b_star(free, [8], [500, 1000], 0.01)  # b* from the supported form: ½ bit more per doubling
    assert bstar["b_star_exact"][1] - bstar["b_star_exact"][0] == pytest.approx(0.5, abs=0.07)


def test_one_n_makes_the_n_row_not_testable_whatever_the_fit():
    cells = cells_of(KAPPA3, (16, 8, 4, 3), (4, 8, 16), (1000,), 2, 0.003)
    _, v = analyse(cells)
    assert v["b* rule N"]["verdict"] == "not testable" and "different N" in v["b* rule N"]["evidence"]


def test_power_planting_recovers_the_held_exponent_and_the_nuisance():
    law = lambda r, b, n: 2.0 + 0.2 * math.sqrt(r / n) + 5.0 * r * bit(b, 3.0)
    cells = cells_of(law, (16, 6, 4, 3), (4, 16), (1000,), 1, 0.0)
    pts = bounds.points(cells)
    d = bounds.design_of(pts)
    y = pts["loss"].to_numpy()
    fit = freefit.constrained(d, y, freefit.grid_for(d), kappa=3.0, rho=1.0)
    assert fit["coef"] == pytest.approx([2.0, 0.2, 5.0], rel=1e-6)
    assert np.allclose(fit["mean"], y)


def test_qlbench_plan_prints_the_cells_that_would_decide_each_undecided_claim(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from qlbench.cli import main

    # the bounds study's grid (bits 16/8/4, ranks 4-32, 3 seeds, one N), planted κ = 3, each cell 90 s
    cells = cells_of(KAPPA3, (16, 8, 4), (4, 8, 16, 32), (1000,), 3, 0.003).with_columns(
        pl.lit("bounds").alias("study"), pl.lit(90.0).alias("wall_s"))
    (tmp_path / "bounds").mkdir()
    cells.write_parquet(tmp_path / "bounds/cells.parquet")
    config = Path(__file__).resolve().parents[3] / "config.yaml"
    result = CliRunner().invoke(main, ["plan", "-c", str(config), "bounds", "--results", str(tmp_path),
                                       "--out", str(tmp_path / "plan")])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(tmp_path / "plan/plan.parquet")
    assert set(plan.VERDICT_COLUMNS) <= set(table.columns)  # the contract `qlbench adapt` reads
    kappa = table.filter(pl.col("verdict").str.starts_with("κ")).row(0, named=True)
    assert kappa["kind"] == "bounds" and not kappa["decided"]
    assert "bits" in json.loads(kappa["overlay"]) and 16 in json.loads(kappa["overlay"])["bits"]
    assert kappa["power_now"] < 0.8 and kappa["power_after"] >= 0.8 and kappa["addition"].startswith("widths +")
    # a width adds one cell per rank and seed (4 × 3), at the measured 90 s each
    assert kappa["cells"] == 12 and kappa["cell_hours"] == pytest.approx(12 * 90 / 3600)
    n_row = table.filter(pl.col("verdict").str.contains("doubling of N")).row(0, named=True)
    assert not n_row["testable_now"] and "N +" in n_row["addition"] and n_row["power_after"] >= 0.8
    n_train = json.loads(n_row["overlay"])["n_train"]  # the study's own N (its default, null) kept first
    added_n = n_row["addition"].split("N +")[1].split(",")
    assert n_train == [None, *map(int, added_n)]
    assert "| κ = 2" in result.output and (tmp_path / "plan/plan.html").exists()


def test_qlbench_plan_without_cells_plants_a_stated_nominal_law(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from qlbench.cli import main

    config = Path(__file__).resolve().parents[3] / "config.yaml"
    result = CliRunner().invoke(main, ["plan", "-c", str(config), "bounds", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "nominal law" in result.output and "unknown until cells" in result.output
    bad = CliRunner().invoke(main, ["plan", "-c", str(config), "sensitivity", "--results", str(tmp_path)])
    assert bad.exit_code == 1 and "no verdict to plan" in bad.output


def test_the_plan_prints_the_verdicts_own_power_now():
    # one power per claim on one grid: the plan's power_now is the bounds page's (claim_powers), not the
    # nuisance-draw simulation, which only promises power_after
    cells = cells_of(KAPPA3, (16, 8, 4), (4, 8, 16, 32), (1000,), 3, 0.003)
    pts = bounds.points(cells)
    verdicts = power.claim_powers(pts)
    table = plan.plan(pts, None, 0.8, 40, draws=4, only=("kappa", "rho", "ratio"), additions=[])
    for name in ("kappa", "rho", "ratio"):
        row = table.filter(pl.col("claim") == plan.CLAIMS[name]).row(0, named=True)
        assert row["power_now"] == pytest.approx(verdicts[name]["power"], abs=1e-12), name
