import math
import signal
import subprocess
import sys

import polars as pl
import pytest

from qlbench import results


def a_row(**changes):
    row = {name: None for name in results.ROW_SCHEMA}
    row.update(study="demo", model="m", bits=4, rank=8, mask="all", seed=0, status="ok", eval_loss=2.5,
               eval_loss_before=2.6, trainable_params=123, **changes)
    return row


def test_row_has_the_schema_and_keeps_extra_measurements(tmp_path):
    df = results.row_frame(a_row(grad_var_mean=0.5))
    assert df.schema["bits"] == pl.Int64 and df.schema["eval_loss"] == pl.Float64
    assert df.schema["status"] == pl.String and df["grad_var_mean"][0] == 0.5
    results.write_parquet(df, tmp_path / "row.parquet")
    back = pl.read_parquet(tmp_path / "row.parquet")
    assert back.schema == df.schema and back.row(0) == df.row(0)


def test_row_missing_a_column_is_refused():
    row = a_row()
    del row["eval_loss"]
    with pytest.raises(ValueError, match="eval_loss"):
        results.row_frame(row)


def test_the_row_carries_its_curve_and_curves_unnest_from_rows():
    steps = [{"step": 0, "loss": 3.0, "lr": 1e-3, "grad_norm": math.nan, "step_time_s": 0.1},
             {"step": 1, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.7, "step_time_s": 0.1, "grad_var": 0.25}]
    rows = pl.concat([results.row_frame(a_row(), steps), results.row_frame({**a_row(), "seed": 7}, [])])
    assert rows.schema[results.CURVE] == results.CURVE_DTYPE and rows.columns[-1] == results.CURVE
    curves = results.curve_frame(rows)  # the second row trained no step: it gives none (not a null step)
    assert curves.schema == results.CURVE_SCHEMA and curves["step"].to_list() == [0, 1]
    assert curves["loss"].to_list() == [3.0, 2.5]
    assert curves["grad_var"][1] == 0.25 and math.isnan(curves["grad_var"][0])
    assert curves.select(list(results.COORDS)).unique().rows() == [tuple(a_row()[k] for k in results.COORDS)]


WRITER = """
import sys, time
from pathlib import Path
from qlbench.results import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"PAR1" * 1000)
        f.flush()
        print("half-written", flush=True)
        time.sleep(60)
"""


def test_a_writer_killed_midway_leaves_no_row(tmp_path):
    target = tmp_path / "row.parquet"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half-written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".row.parquet.tmp") for p in leftovers)  # a hidden temp, never the row


def test_a_failed_block_leaves_nothing(tmp_path):
    target = tmp_path / "row.parquet"
    with pytest.raises(RuntimeError):
        with results.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
