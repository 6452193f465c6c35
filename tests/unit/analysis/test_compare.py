"""The compare table from hand-made cells: groups by a column and by a setting read from settings_json (an unset one
at its default), means and 95% t half-widths worked out by hand, diverged cells counted apart."""

import json
import math

import polars as pl
import pytest

from qlbench.analysis import compare


def cell(bits, seed, loss, settings, status="ok"):
    return {"bits": bits, "seed": seed, "status": status, "eval_answer_loss": loss, "settings_json": json.dumps(settings)}


CELLS = pl.DataFrame([
    cell(4, 0, 2.0, {}), cell(4, 1, 2.4, {}),  # completion_only_loss unset: its default (None -> "–")
    cell(4, 0, 3.0, {"completion_only_loss": False}), cell(4, 1, 3.1, {"completion_only_loss": False}),
    cell(4, 2, 9.9, {"completion_only_loss": False}, status="diverged"),
    cell(16, 0, 1.5, {"completion_only_loss": False}),
])


def test_groups_means_and_intervals_by_hand():
    t = compare.table(CELLS, ["completion_only_loss", "bits"], ["eval_answer_loss"], {"completion_only_loss": None})
    rows = {(r["completion_only_loss"], r["bits"]): r for r in t.iter_rows(named=True)}
    assert set(rows) == {("–", "4"), ("False", "4"), ("False", "16")}
    unset = rows[("–", "4")]
    # 2.0 and 2.4: mean 2.2, sd 0.2828, half-width t(0.975, 1)·sd/√2 = 12.7062·0.2 = 2.5412
    assert unset["eval_answer_loss"] == pytest.approx(2.2) and unset["eval_answer_loss_ci"] == pytest.approx(2.5412, 1e-4)
    full = rows[("False", "4")]
    assert full["seeds"] == 2 and full["diverged"] == 1 and full["eval_answer_loss"] == pytest.approx(3.05)
    assert math.isnan(rows[("False", "16")]["eval_answer_loss_ci"])  # one seed: no interval
    text = compare.markdown(t, ["completion_only_loss", "bits"], ["eval_answer_loss"])
    assert "| – | 4 | 2 | 2.2000 ± 2.5412 |" in text and "| False | 16 | 1 | 1.5000 |" in text


def test_an_unknown_metric_is_named():
    with pytest.raises(KeyError, match="nope"):
        compare.table(CELLS, ["bits"], ["nope"])
