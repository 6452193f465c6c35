"""The summary table against numbers computed by hand: mean and sample sd over seeds, per configuration."""

import polars as pl
import pytest

from qlbench.analysis import summary


def test_summary_means_and_sample_sds_by_hand():
    rows = []
    for seed, (a, b) in enumerate([(2.0, 3.0), (2.5, 3.5), (3.0, 5.0)]):
        base = {"model": "m", "n_train": None, "targets": "qv", "rank": 4, "mask": "all", "seed": seed,
                "status": "ok", "eval_loss_before": 9.0, "eval_ppl": 1.0, "step_time_s": 0.1, "peak_mem_mb": 10.0}
        rows += [{**base, "bits": 4, "eval_loss": a}, {**base, "bits": 16, "eval_loss": b}]
    rows[-1]["status"] = "diverged"
    table = summary.by_config(pl.DataFrame(rows))
    four, sixteen = (table.filter(pl.col("bits") == b).row(0, named=True) for b in (4, 16))
    assert table["bits"].to_list() == [16, 4]  # higher precision first
    assert four["eval_loss_mean"] == 2.5 and four["eval_loss_sd"] == pytest.approx(0.5)  # sqrt(((.5)²+0+(.5)²)/2)
    assert sixteen["eval_loss_mean"] == pytest.approx(23 / 6)
    assert sixteen["eval_loss_sd"] == pytest.approx(((5 / 6) ** 2 + (1 / 3) ** 2 + (7 / 6) ** 2) ** 0.5 / 2 ** 0.5)
    assert (four["seeds"], four["diverged"], sixteen["diverged"]) == (3, 0, 1)
