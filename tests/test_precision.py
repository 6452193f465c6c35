"""Switchable precision (QaLoF) through a real cell: one adapter per width, cyclic training, random switching."""

import subprocess

import polars as pl

from conftest import BIN, REPO


def run_cell(workdir, *sets):
    args = [BIN / "qlbench", "run", "-c", REPO / "config.yaml", "--study", "micro", "--model", "micro-gpt2",
            "--bits", "4", "--rank", "4", "--mask", "all", "--seed", "0", "--out", workdir / "cell",
            "--set", "steps=12"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return pl.read_parquet(workdir / "cell/row.parquet").row(0, named=True)


def test_switchable_precision_evaluates_every_width_and_random_switching(workdir):
    row = run_cell(workdir, "switch_bits=[2,4,8]")
    widths = [row[f"eval_loss_b{w}"] for w in (2, 4, 8)]
    assert row["eval_loss"] == row["eval_loss_b4"]  # the cell's own width, with its own adapter
    assert widths[0] > widths[1] and widths[0] > widths[2]  # 2 bits is the worst width
    assert min(widths) <= row["eval_loss_random_switch"] <= max(widths)
    assert row["trainable_params"] == 3 * run_cell(workdir)["trainable_params"]  # three adapters


def test_a_width_outside_switch_bits_is_refused(workdir):
    args = [BIN / "qlbench", "run", "-c", REPO / "config.yaml", "--study", "micro", "--model", "micro-gpt2",
            "--bits", "4", "--rank", "4", "--out", workdir / "x", "--set", "switch_bits=[6,8]"]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert done.returncode != 0 and "switch_bits" in done.stderr
