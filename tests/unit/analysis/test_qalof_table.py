"""QaLoF's tables and the task-metric sensitivity from hand-made cells: every number worked out by hand."""

import json

import polars as pl
import pytest

from qlbench.analysis import qalof, sensitivity
from qlbench.analysis.seeds import mean_ci

T975_1 = 12.706204736  # Student t, 0.975 quantile, 1 degree of freedom


def cell(bits, mask, seed, em, f1, settings=None, **extra):
    return {"model": "m", "rank": 8, "bits": bits, "mask": mask, "seed": seed, "em": em, "f1": f1,
            "settings_json": json.dumps(settings or {}), "wall_s": 10.0, **extra}


def test_mean_ci_is_the_t_interval_of_the_seeds():
    out = mean_ci(pl.DataFrame({"g": ["a", "a"], "x": [1.0, 3.0]}), ["g"], ["x"])
    r = out.row(0, named=True)
    assert r["x"] == 2.0 and r["seeds"] == 2
    assert r["x_ci95"] == pytest.approx(T975_1, rel=1e-6)  # sd √2, n 2: t·√2/√2 = t


def test_each_cell_gives_its_configurations_with_seed_means():
    switch = {"switch_bits": [8, 4]}
    cells = pl.DataFrame([
        cell(16, "none", 0, 60.0, 70.0, eval_em_b8=58.0, eval_f1_b8=68.0, eval_em_b4=40.0, eval_f1_b4=50.0),
        cell(16, "none", 1, 62.0, 72.0, eval_em_b8=60.0, eval_f1_b8=70.0, eval_em_b4=44.0, eval_f1_b4=54.0),
        cell(4, "all", 0, 50.0, 60.0, settings=switch, eval_em_b8=55.0, eval_f1_b8=65.0, eval_em_b4=50.0,
             eval_f1_b4=60.0, eval_em_hybrid=52.0, eval_f1_hybrid=62.0),
        cell(8, "all", 0, 56.0, 66.0), cell(8, "b0", 0, 10.0, 20.0),  # a retrained scan cell: no uniform LoRA
    ], infer_schema_length=None)
    table = {r["configuration"]: r for r in qalof.table(cells).iter_rows(named=True)}
    assert table["FP LoRA"]["em"] == 61.0 and table["FP LoRA"]["seeds"] == 2
    assert table["8-bit static PTQ"]["f1"] == 69.0 and table["4-bit static PTQ"]["em"] == 42.0
    assert table["switchable, all-8"]["em"] == 55.0 and table["switchable, hybrid"]["f1"] == 62.0
    assert "LoRA, 4-bit base" not in table  # a switchable cell's own width is its all-4 row, not a static LoRA
    assert table["LoRA, 8-bit base"]["em"] == 56.0 and table["LoRA, 8-bit base"]["seeds"] == 1
    order = list(table)
    assert order.index("FP LoRA") < order.index("8-bit static PTQ") < order.index("4-bit static PTQ")


def test_the_scan_and_the_retrained_scan_rank_the_same_planted_order():
    """Block b1 hurts most, then b0, then b2 — planted in both the scan columns and the retrained cells."""
    switch = {"switch_bits": [8, 4]}
    scan = {"eval_f1_scan_base": 70.0, "eval_f1_scan_b0": 65.0, "eval_f1_scan_b1": 55.0, "eval_f1_scan_b2": 69.0,
            "eval_em_scan_base": 0.0, "scan_s": 3.0}
    rows = [cell(4, "all", 0, 50.0, 60.0, settings=switch, **scan)]
    for seed, shift in ((0, 0.0), (1, 2.0)):
        rows += [cell(4, "none", seed, 50.0, 80.0 + shift), cell(4, "b0", seed, 50.0, 76.0 + shift),
                 cell(4, "b1", seed, 50.0, 60.0 + shift), cell(4, "b2", seed, 50.0, 79.0 + shift)]
    out = qalof.scan(pl.DataFrame(rows, infer_schema_length=None), "f1")
    by_mask = {r["mask"]: r for r in out.iter_rows(named=True)}
    assert by_mask["b1"]["scan_drop"] == 15.0 and by_mask["b1"]["retrain_drop"] == 20.0
    assert [by_mask[m]["rank_scan"] for m in ("b1", "b0", "b2")] == [1, 2, 3]
    assert [by_mask[m]["rank_retrain"] for m in ("b1", "b0", "b2")] == [1, 2, 3]
    assert by_mask["b0"]["spearman"] == pytest.approx(1.0)
    assert by_mask["b0"]["scan_s"] == 3.0 and by_mask["b0"]["retrain_s"] == 80.0  # 8 retrained cells of 10 s


def test_sensitivity_by_f1_ranks_the_largest_fall_first():
    rows = []
    for seed in (0, 1):
        rows += [cell(4, "none", seed, 0.0, 80.0), cell(4, "b0", seed, 0.0, 78.0), cell(4, "b1", seed, 0.0, 70.0)]
    cells = pl.DataFrame(rows).with_columns(pl.lit("extractive_qa").alias("task"), pl.lit(None).alias("n_train"),
                                            pl.lit(2.0).alias("eval_loss"))
    assert sensitivity.task_metric(cells) == "f1"
    ranked = {r["mask"]: r for r in sensitivity.ranking(cells, "f1").iter_rows(named=True)}
    assert ranked["b1"]["degradation"] == 10.0 and ranked["b1"]["rank_measured"] == 1
    assert ranked["b0"]["degradation"] == 2.0 and ranked["b0"]["rank_measured"] == 2
