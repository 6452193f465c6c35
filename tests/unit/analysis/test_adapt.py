"""`qlbench adapt`'s decisions on planted plans (no snakemake): which addition a round takes, when the loop stops and
why, the overlay it writes and the record it keeps."""

import json
import math

import polars as pl
import pytest
import yaml

from qlbench import registry
from qlbench.analysis import adapt as A, applies, plan_overlay
from qlbench.study import config as studylib

AXES = {"bits": [16, 8, 4, 3, 2], "ranks": [4, 16], "masks": ["all"], "seeds": [0, 1]}


def plan_table(rows):
    """A plan in the all-kinds form: kind, verdict, decided, power_now, addition, overlay, power_after."""
    return pl.DataFrame([{"kind": "bounds", "testable_now": True, "cells": 0, "cell_hours": 0.0, **r,
                          "overlay": json.dumps(r["overlay"]) if r.get("overlay") else None} for r in rows])


def cost_by_rank(hours_per_cell):
    """A planted cost: each added rank adds 10 cells of `hours_per_cell[rank]` each; N beyond 2075 cannot be run."""
    def cost(overlay):
        axes, why = A.grown(AXES, overlay, [2075])
        if why:
            return None, [], 0.0, why
        new = [r for r in axes["ranks"] if r not in AXES["ranks"]]
        cells = [f"m/b{b}/r{r}/all/s{s}" for r in new for b in axes["bits"] for s in axes["seeds"]]
        return axes, cells, sum(hours_per_cell[r] * len(axes["bits"]) * len(axes["seeds"]) for r in new), None
    return cost


UNDECIDED = [
    {"verdict": "kappa", "decided": True, "power_now": 1.0, "addition": "none needed", "power_after": 1.0},
    {"verdict": "c1", "decided": False, "power_now": None, "addition": "ranks +64", "overlay": {"ranks": [4, 16, 64]},
     "power_after": 0.99},
    {"verdict": "ratio", "decided": False, "power_now": 0.44, "addition": "ranks +2", "overlay": {"ranks": [2]},
     "power_after": 0.97},
    {"verdict": "rho", "decided": False, "power_now": 0.5, "addition": "ranks +2", "overlay": {"ranks": [2, 4, 16]},
     "power_after": 0.85},
    {"verdict": "beta", "decided": False, "power_now": None, "addition": "N +8300",
     "overlay": {"train_examples": [2075, 8300]}, "power_after": 1.0},
]
HOURS = {2: 0.005, 64: 0.004}  # rank 64 is cheaper per cell here, but decides one verdict where rank 2 decides two


def test_the_round_takes_the_fewest_cell_hours_per_verdict_it_decides():
    rows = A.verdicts(plan_table(UNDECIDED), 0.8)
    step = A.next_step(rows, cost_by_rank(HOURS), spent=0.0, budget=10.0, done=0, rounds=5)
    assert step.stop is None
    assert step.choice.verdicts == ("ratio", "rho")  # the same cells named twice: one option for both
    assert step.choice.addition == "ranks +2" and step.choice.axes["ranks"] == [2, 4, 16]
    assert len(step.choice.cells) == 10 and step.choice.hours == pytest.approx(0.05)
    assert "beta" in step.blocked and "beyond the largest N measured" in step.blocked["beta"]
    # with rank 2 dear enough, rank 64's single verdict is the cheaper per verdict
    dear = A.next_step(rows, cost_by_rank({2: 0.009, 64: 0.004}), 0.0, 10.0, 0, 5)
    assert dear.choice.verdicts == ("c1",)


def test_the_loop_stops_at_the_budget_the_rounds_and_when_nothing_is_left():
    rows = A.verdicts(plan_table(UNDECIDED), 0.8)
    over = A.next_step(rows, cost_by_rank(HOURS), spent=0.96, budget=1.0, done=1, rounds=5)
    assert over.choice is None and "would pass the budget" in over.stop and "ranks +2" in over.stop
    fits = A.next_step(rows, cost_by_rank(HOURS), spent=0.95, budget=1.0, done=1, rounds=5)
    assert fits.choice is not None
    assert "2 rounds done" in A.next_step(rows, cost_by_rank(HOURS), 0.0, 10.0, done=2, rounds=2).stop
    decided = [{**r, "decided": True} for r in UNDECIDED]
    assert A.next_step(A.verdicts(plan_table(decided), 0.8), cost_by_rank(HOURS), 0, 1, 0, 5).stop == \
        "every verdict is decided"
    # what is left cannot be decided: beta needs N the study cannot add, c1's best addition stays below the level
    left = [UNDECIDED[0], UNDECIDED[4], {**UNDECIDED[1], "addition": "ranks +64 (best tried; below the level)",
                                         "power_after": 0.6}]
    step = A.next_step(A.verdicts(plan_table(left), 0.8), cost_by_rank(HOURS), 0, 10, 0, 5)
    assert step.choice is None and step.stop.startswith("every verdict an addition can decide is decided")
    assert "c1: no addition the plan tried reaches the level (best tried" in step.stop
    assert "beta: N +8300: N 8300 is beyond" in step.stop


def test_the_bounds_plan_of_today_reads_as_verdicts():
    table = pl.DataFrame({"claim": ["κ = 2", "½ bit per doubling of r"], "power_now": [1.0, 0.44],
                          "testable_now": [True, True], "addition": ["none needed", "ranks +2"], "cells": [0, 10],
                          "cell_hours": [0.0, 0.06], "power_after": [1.0, 0.97]})
    grid = {"bits": [2, 3, 4, 8, 16], "ranks": [4, 16], "examples": [2075], "seeds": 2}
    table = table.with_columns(pl.Series("overlay", [plan_overlay.overlay(a, grid) for a in table["addition"]]))
    rows = A.verdicts(table, 0.8)
    assert [r["decided"] for r in rows] == [True, False] and rows[1]["reaches"]
    assert rows[1]["overlay"]["ranks"] == [2, 4, 16] and rows[0]["overlay"] is None


def test_grown_axes():
    axes, why = A.grown({**AXES, "n_train": [500, 1000]}, {"bits": [6, 4], "seeds": 4, "train_examples": [250]},
                        [500, 1000])
    assert why is None and axes["bits"] == [16, 8, 6, 4, 3, 2] and axes["seeds"] == [0, 1, 2, 3]
    assert axes["n_train"] == [500, 1000, 250]  # the study's own first
    assert "beyond the largest N" in A.grown({**AXES, "n_train": [500]}, {"train_examples": [2000]}, [500])[1]
    assert "cannot grow" in A.grown(AXES, {"lr": [0.1]}, [500])[1]
    # the all-kinds plan writes a study's default N as null, first: already measured, only the rest is added
    assert A.grown(AXES, {"n_train": [None, 2075]}, [2075]) == (AXES, None)
    assert "no n_train axis" in A.grown(AXES, {"train_examples": [518, 2075]}, [2075])[1]
    assert A.grown(AXES, {"n_train": [None, 518]}, [2075])[0]["n_train"] == [None, 518]  # the loader judges it
    assert "beyond the largest N measured (2075)" in A.grown(AXES, {"n_train": [None, 518, 8300]}, [2075])[1]


def test_the_overlay_is_yaml_with_every_cell_and_says_what_each_addition_is_for():
    choice = A.Option("ranks +2", ("ratio",), {**AXES, "ranks": [2, 4, 16]}, ("a", "b"), 0.06,
                      {"ratio": 0.44}, {"ratio": 0.97})
    rec = A.record(1, choice, AXES)
    text = A.overlay_yaml("demo", choice.axes, 1, [rec], "snakemake --configfile results/demo/adapt/round-1.yaml",
                          ["budget 1"])
    data = yaml.safe_load(text)
    assert data == {"study": "demo", "studies": {"demo": {**AXES, "ranks": [2, 4, 16]}}}
    ranks_line = next(line for line in text.splitlines() if line.strip().startswith("ranks:"))
    assert "round 1: +2 for 'ratio' (power 0.44 -> 0.97 predicted)" in ranks_line
    assert "2 cells, 0.060 cell-hours predicted" in text


def test_rounds_table_adds_the_rounds_hours_and_keeps_predictions_beside_measurements():
    plans = {0: [{"kind": "bounds", "verdict": "ratio", "decided": False, "power_now": 0.44}],
             1: [{"kind": "bounds", "verdict": "ratio", "decided": True, "power_now": 0.9}],
             2: [{"kind": "bounds", "verdict": "ratio", "decided": True, "power_now": 0.95}]}
    rec = lambda k: {"addition": f"a{k}", "for": ["ratio"] if k == 1 else [], "power_predicted": {"ratio": 0.97},
                     "cells": ["x"] * 10, "cell_hours_predicted": 0.06}
    table = A.rounds_table({1: rec(1), 2: rec(2)}, plans, {0: 0.5, 1: 0.05, 2: 0.07}, base_cells=20)
    assert table["cumulative_cell_hours"].to_list() == pytest.approx([0.0, 0.05, 0.12])
    assert table["power_before"].to_list()[1:] == [0.44, 0.9] and table["power_before"][0] is None
    assert table["power_predicted"].to_list() == [None, 0.97, None]
    assert table["cells_added"].to_list() == [20, 10, 10] and not math.isnan(table["cell_hours"][0])


def test_the_report_section_applies_once_the_record_exists(repo_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    st = studylib.load(repo_config, "demo")
    condition = registry.analyses()["adapt_rounds"].applies
    assert not applies.applies(condition, st)
    (tmp_path / "results/demo/adapt").mkdir(parents=True)
    A.rounds_table({}, {0: []}, {0: 0.0}, 20).write_parquet(tmp_path / "results/demo/adapt/rounds.parquet")
    assert applies.applies(condition, st)
