"""The gaps QaLoF's table turns on, from hand-made cells: paired by seed, the t interval by hand, and the verdict
that says what the seeds carry (and says "not established" where they do not)."""

import json

import polars as pl
import pytest

from qlbench.analysis import qalof_gaps

T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}  # Student t, 0.975 quantile, by degrees of freedom


def cell(bits, mask, seed, em, f1, settings=None, **extra):
    return {"model": "m", "rank": 8, "bits": bits, "mask": mask, "seed": seed, "em": em, "f1": f1,
            "settings_json": json.dumps(settings or {}), "wall_s": 10.0, **extra}


def _gap(cells, question, metric):
    rows = [r for r in qalof_gaps.gaps(pl.DataFrame(cells, infer_schema_length=None)).iter_rows(named=True)
            if r["gap"] == question and r["metric"] == metric]
    assert len(rows) == 1, rows
    return rows[0]


def test_a_gap_is_paired_by_seed_and_its_interval_is_the_t_interval_of_the_differences():
    """FP 60/62/64 EM; at 4 bits without retraining 55/58/60: differences -5, -4, -4 (mean -13/3, sd 1/sqrt(3)).
    The seeds' levels differ by 4 points, the paired differences by 1: pairing is what makes the interval narrow."""
    cells = [cell(16, "all", s, fp, fp + 10, eval_em_b4=q, eval_f1_b4=q + 10 + d, eval_em_b8=fp, eval_f1_b8=fp + 10)
             for s, fp, q, d in ((0, 60.0, 55.0, 0.0), (1, 62.0, 58.0, 5.0), (2, 64.0, 60.0, -5.0))]
    em = _gap(cells, "4-bit static PTQ vs FP", "em")
    sd = (1 / 3) ** 0.5
    assert em["seeds"] == 3 and em["mean"] == pytest.approx(-13 / 3)
    assert em["ci95"] == pytest.approx(T975[2] * sd / 3**0.5, rel=1e-6)  # 1.434: the interval is [-5.77, -2.90]
    assert em["verdict"] == "4-bit static PTQ < FP LoRA"
    f1 = _gap(cells, "4-bit static PTQ vs FP", "f1")  # -5, +1, -9: sd sqrt(76/3) = 5.03, the interval spans zero
    assert f1["mean"] == pytest.approx(-13 / 3) and f1["verdict"] == "not established with 3 seeds"
    same = _gap(cells, "8-bit static PTQ vs FP", "em")  # no difference on any seed: sd 0, no gap either way
    assert same["mean"] == 0.0 and same["verdict"] == "not established with 3 seeds"


def test_one_seed_establishes_nothing_and_a_gap_above_zero_says_so():
    assert qalof_gaps.verdict(-9.0, float("nan"), 1, "B < A", "B > A") == "not established with 1 seed"
    assert qalof_gaps.verdict(3.0, 2.0, 4, "B < A", "B > A") == "B > A"
    assert qalof_gaps.verdict(3.0, 3.5, 4, "B < A", "B > A") == "not established with 4 seeds"


def test_switchable_gaps_pair_within_one_training_schedule():
    """Two schedules of the same switchable model never pair with each other: each gets its own row."""
    cells = []
    for schedule, (hi, lo) in (("sequential", (50.0, 40.0)), ("cyclic", (50.0, 49.0))):
        for seed in (0, 1):
            cells.append(cell(4, "all", seed, 0.0, 0.0, settings={"switch_bits": [8, 4], "switch_schedule": schedule},
                              eval_em_b8=hi + seed, eval_f1_b8=hi, eval_em_b4=lo + seed, eval_f1_b4=lo))
    rows = {r["schedule"]: r for r in qalof_gaps.gaps(pl.DataFrame(cells)).iter_rows(named=True)
            if r["gap"] == "switchable: all-4 vs all-8" and r["metric"] == "em"}
    assert rows["sequential"]["mean"] == -10.0 and rows["cyclic"]["mean"] == -1.0
    assert rows["sequential"]["seeds"] == 2 and rows["sequential"]["ci95"] == 0.0
    assert rows["sequential"]["verdict"] == "switchable, all-4 < switchable, all-8"


def test_the_scans_agreement_is_spearman_within_each_seed_with_an_interval_over_seeds():
    """Seeds 0 and 1: the scan orders b1 > b0 > b2 > b3 as the retrained cells do (rho 1); seed 2 swaps the
    retrained b0 and b2 (rho 0.8). Mean 14/15, sd 0.1155, t(2): [0.647, 1.220] — above zero: agree."""
    switch = {"switch_bits": [8, 4]}
    rows = []
    for seed, retrained in ((0, (4, 20, 1, 0)), (1, (4, 20, 1, 0)), (2, (1, 20, 4, 0))):
        scan = {"eval_f1_scan_base": 70.0, "eval_f1_scan_b0": 65.0, "eval_f1_scan_b1": 55.0,
                "eval_f1_scan_b2": 69.0, "eval_f1_scan_b3": 69.5, "scan_s": 1.0}
        rows.append(cell(4, "all", seed, 0.0, 0.0, settings=switch, **scan))
        rows.append(cell(4, "none", seed, 0.0, 80.0))
        rows += [cell(4, f"b{i}", seed, 0.0, 80.0 - d) for i, d in enumerate(retrained)]
    out = qalof_gaps.agreement(pl.DataFrame(rows, infer_schema_length=None), "f1").row(0, named=True)
    assert out["seeds"] == 3 and out["units"] == 4
    assert out["mean"] == pytest.approx(14 / 15)
    sd = ((2 * (1 - 14 / 15) ** 2 + (0.8 - 14 / 15) ** 2) / 2) ** 0.5
    assert out["ci95"] == pytest.approx(T975[2] * sd / 3**0.5, rel=1e-6)
    assert out["verdict"] == "agree"
