"""The uniform noise model checked on qlbench's own quantizers (qlbench.quant.noise): the step each one really
uses, the ratio where the model holds, where it breaks, and a quantizer whose step is wrong."""

import polars as pl
import pytest
import torch

from qlbench.quant import noise
from qlbench.quant.formats import quantize_int


def gaussian(rows=128, cols=512, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_int_step_is_the_row_range_over_the_largest_level():
    w = torch.tensor([[3.0, -1.5, 0.5], [0.7, 0.1, -0.2]])
    # symmetric int at 3 bits: levels −3..3, so Δ_row = max|w_row| / 3; at 2 bits Δ_row = max|w_row| / 1
    assert noise._int_step(w, 3)[:, 0].tolist() == pytest.approx([1.0, 0.7 / 3])
    assert noise._int_step(w, 2)[:, 0].tolist() == pytest.approx([3.0, 0.7])
    # the paper's Δ = 2^(1−b)·R would be R/4 at 3 bits and R/2 at 2 bits: a factor 4/3 and 2 apart
    assert noise._adapter_step(w, 2)[0, 0].item() == pytest.approx(3.0)


def test_the_uniform_model_holds_at_8_and_4_bits_on_every_quantizer():
    rows = pl.DataFrame(noise.check({"g": gaussian()}, [4, 8]))
    int8 = rows.filter((pl.col("quantizer") == "int") & (pl.col("bits") == 8))["ratio"][0]
    assert int8 == pytest.approx(1.0, abs=0.02)
    assert rows.filter(pl.col("quantizer") != "nf")["ratio"].is_between(0.95, 1.05).all()
    assert rows["holds"].all()


def test_per_row_steps_matter_when_rows_differ_in_range():
    w = gaussian() * torch.linspace(0.05, 5, 128)[:, None]  # rows whose ranges differ 100×
    row = noise.check_one(w, 8, *noise.QUANTIZERS["int"])
    assert row["ratio"] == pytest.approx(1.0, abs=0.02)
    # the whole-tensor step the old noise ratio used overstates the per-row quantizer's error many times over
    assert row["ratio_to_paper"] < 0.3


def test_the_uniform_model_breaks_at_2_bits_and_the_check_says_so():
    w = gaussian()
    row = noise.check_one(w, 2, *noise.QUANTIZERS["adapter"])
    # per matrix, 2 bits: levels 0 and ±R (R = max|w| ≈ 4.4σ), so an entry below R/2 rounds to 0 (error: itself)
    # and one above to ±R (error R − |w|): by hand, against the uniform model's Δ²/12 = R²/12
    r = w.abs().max()
    by_hand = torch.where(w.abs() < r / 2, w**2, (r - w.abs()) ** 2).mean().item()
    assert row["measured_var"] == pytest.approx(by_hand, rel=1e-5)
    assert row["predicted_var"] == pytest.approx(r.item() ** 2 / 12, rel=1e-6)
    assert row["ratio"] < 0.8 and not row["holds"]


def test_a_quantizer_whose_step_is_wrong_fails_the_check():
    # claims the int step R/(2^(b−1) − 1) but rounds one bit coarser: about twice the step, four times the variance
    wrong = (lambda w, b: quantize_int(w, b - 1), noise._int_step)
    rows = pl.DataFrame(noise.check({"g": gaussian()}, [4, 6, 8], {"wrong": wrong}))
    assert not rows["holds"].any()
    assert rows.filter(pl.col("bits") == 8)["ratio"][0] == pytest.approx((127 / 63) ** 2, rel=0.03)
