"""Settings that change what a cell computes, through real cells of the micro study: per-layer widths
(`layer_bits`), bits on LoRA's A and B (`bits_target: adapter`), a training subset (`--n-train`), bf16 autocast;
and `qlbench masks --resolve`."""

from __future__ import annotations

import subprocess

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from qlbench.study import config as study, masks

from conftest import BIN, CONFIG_ARGS

CELL = ["--study", "micro", "--model", "micro-gpt2", "--rank", "4", "--seed", "0", "--set", "steps=6"]


def run(workdir, name, *args):
    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, *CELL, *args, "--out", workdir / name]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return pl.read_parquet(workdir / name / "row.parquet").row(0, named=True)


@pytest.fixture(scope="module")
def cells(tmp_path_factory, micro_resources):
    work = tmp_path_factory.mktemp("cell-settings")
    (work / "resources").symlink_to(micro_resources)
    rows = {
        "plain": run(work, "plain", "--bits", "4", "--mask", "b1.mlp"),
        "layer_bits": run(work, "layer_bits", "--bits", "4", "--mask", "b1.mlp", "--set", "layer_bits={b0.attn: 2}"),
        "adapter": run(work, "adapter", "--bits", "3", "--mask", "all", "--set", "bits_target=adapter"),
        "n_train": run(work, "n_train", "--bits", "4", "--mask", "b1.mlp", "--n-train", "100"),
        "bf16": run(work, "bf16", "--bits", "4", "--mask", "b1.mlp", "--set", "compute_dtype=bfloat16"),
    }
    return work, rows


def test_layer_bits_pin_their_modules_to_their_width(cells):
    work, rows = cells
    layers = pl.read_parquet(work / "layer_bits/layers.parquet")
    widths = dict(zip(layers["module"], layers["module_bits"]))
    assert widths == {"transformer.h.0.attn.c_attn": 2, "transformer.h.0.attn.c_proj": 2,
                      "transformer.h.1.mlp.c_fc": 4, "transformer.h.1.mlp.c_proj": 4}
    assert rows["layer_bits"]["n_quantized"] == 4 and rows["plain"]["n_quantized"] == 2
    assert rows["layer_bits"]["eval_loss_before"] > rows["plain"]["eval_loss_before"]  # 2-bit attention costs


def test_bits_on_the_adapters_round_a_and_b_and_leave_the_base_alone(cells):
    work, rows = cells
    row = rows["adapter"]
    assert (row["adapter_bits"], row["n_quantized"], row["bits"]) == (3, 0, 3)
    adapter = load_file(work / "adapter/adapter.safetensors")
    assert adapter and all(len(torch.unique(w)) <= 2**3 - 1 for w in adapter.values())  # levels -3..3 · scale
    assert any(len(torch.unique(w)) > 2 for w in adapter.values())  # trained: not all zero


def test_n_train_limits_the_training_examples(cells):
    _, rows = cells
    assert rows["n_train"]["train_examples"] == 100 and rows["n_train"]["n_train"] == 100
    assert rows["plain"]["train_examples"] > 1000  # the whole training split of chatterbot


def test_bf16_autocast_runs_and_stays_near_float32(cells):
    _, rows = cells
    a, b = rows["plain"]["eval_loss"], rows["bf16"]["eval_loss"]
    assert a != b and abs(a - b) < 0.05  # bf16 rounds (differs) but computes the same model


def test_masks_resolve_prints_what_the_mask_selects(repo_config):
    out = subprocess.run([BIN / "qlbench", "masks", *CONFIG_ARGS, "micro-gpt2", "--resolve",
                          "b1.mlp+b0.attn.c_proj"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lay = study.load(repo_config, "micro").layout("micro-gpt2")
    assert out.stdout.split() == masks.resolve("b1.mlp+b0.attn.c_proj", lay) == [
        "transformer.h.0.attn.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
