"""The deploy-cost table: one row per configuration and deploy format, from a single format's columns or a sweep's
`@NAME` columns; the cost is deployed − merged paired by cell, means over seeds with 95% t-intervals."""

import math

import polars as pl
import pytest

from qlbench.analysis import deployed
from qlbench.analysis.stats import t_quantile


def _cells(**extra):
    base = {"study": ["s", "s"], "model": ["m", "m"], "bits": [4, 4], "rank": [4, 4], "mask": ["all", "all"],
            "seed": [0, 1], "merged_eval_loss": [2.0, 3.0]}
    return pl.DataFrame({**base, **extra})


def test_a_sweeps_formats_each_get_a_row_with_paired_costs_and_intervals():
    cells = _cells(**{"deploy": ["gguf:Q8_0, gguf:Q4_0"] * 2, "deployed_eval_loss@gguf:Q8_0": [2.0, 3.0],
                      "deployed_eval_loss@gguf:Q4_0": [2.1, 3.3]})
    t = deployed.table(cells)
    assert t["deploy"].to_list() == ["gguf:Q8_0", "gguf:Q4_0"]  # cheapest first
    q4 = t.row(1, named=True)
    assert q4["seeds"] == 2 and q4["cost"] == pytest.approx(0.2) and q4["deployed_eval_loss"] == pytest.approx(2.7)
    # paired costs 0.1, 0.3: sd 0.1414, half-width t(0.975, 1)·sd/√2
    assert q4["cost_ci95"] == pytest.approx(t_quantile(0.975, 1) * math.sqrt(0.02) / math.sqrt(2), rel=1e-6)
    assert t.row(0, named=True)["cost"] == 0.0


def test_one_format_is_named_by_the_deploy_column_and_no_deploy_gives_an_empty_table():
    t = deployed.table(_cells(deploy=["gguf:Q4_0"] * 2, deployed_eval_loss=[2.5, float("nan")]))
    assert t["deploy"].to_list() == ["gguf:Q4_0"] and t["seeds"].to_list() == [1]
    assert math.isnan(t["cost_ci95"][0]) and t["cost"][0] == pytest.approx(0.5)
    assert deployed.table(_cells()).is_empty()
