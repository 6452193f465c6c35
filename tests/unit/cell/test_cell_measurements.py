"""A cell writes the measurements of issue 4: gradient variance, per-layer quantization error, probe generations."""

import math
import subprocess

import polars as pl
import pytest

from conftest import BIN, CONFIG_ARGS
from qlbench import results


@pytest.fixture(scope="module")
def cell(tmp_path_factory, micro_resources):
    out = tmp_path_factory.mktemp("cell") / "b4"
    subprocess.run([BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model", "micro-gpt2",
                    "--bits", "4", "--rank", "4", "--mask", "all", "--out", out, "--set", "steps=6",
                    "--set", "grad_var_points=2"], check=True, capture_output=True, cwd=micro_resources.parent)
    return out


def test_row_has_gradient_quantization_and_generation_columns(cell):
    row = pl.read_parquet(cell / "row.parquet").row(0, named=True)
    assert row["grad_var_n"] == 2 and row["grad_var_first"] > 0 and row["grad_var_last"] > 0
    assert row["grad_var_mean"] == pytest.approx((row["grad_var_first"] + row["grad_var_last"]) / 2)
    assert row["grad_var_per_param_mean"] == pytest.approx(row["grad_var_mean"] / row["trainable_params"])
    assert 5 < row["quant_snr_db"] < 60 and 0 < row["quant_noise_ratio"] < 10
    assert row["gen_probes"] == 32 and math.isnan(row["em"])  # chatterbot has no reference answers


def test_layers_parquet_is_one_row_per_quantized_module(cell):
    row = pl.read_parquet(cell / "row.parquet").row(0, named=True)
    layers = pl.read_parquet(cell / "layers.parquet")
    assert layers.height == row["n_quantized"] == 8 and set(layers["module_bits"]) == {4}
    assert layers["quant_mse"].mean() == pytest.approx(row["quant_mse"])
    assert (layers["noise_ratio"] - layers["quant_mse"] / layers["noise_var_uniform"]).abs().max() < 1e-12
    assert layers["quant_snr_db"].mean() == pytest.approx(row["quant_snr_db"])


def test_curve_marks_the_probe_steps_and_generations_are_stored(cell):
    curve = pl.read_parquet(cell / "row.parquet").select("curve").explode("curve").unnest("curve")
    assert curve.filter(pl.col("grad_var").is_not_nan())["step"].to_list() == [0, 5]
    gens = pl.read_parquet(cell / "generations.parquet")
    assert gens.height == 32 and gens["probe"].to_list() == list(range(32))
    assert set(gens["hidden_mean"].list.len()) == {64}  # micro-gpt2's width


def test_a_16_bit_cell_has_an_empty_layers_table():
    df = results.layers_frame({"study": "s", "model": "m", "bits": 16, "rank": 4, "mask": "none", "seed": 0,
                               "n_train": None}, [])
    assert df.height == 0 and df.schema == results.LAYERS_SCHEMA
