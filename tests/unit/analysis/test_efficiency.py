"""The efficiency table against hand-computed values: memory reduction and relative speed against the 16-bit
configuration, and QLoRA's predicted weight bytes (0.5 + double-quantization overhead per parameter)."""

import json

import polars as pl
import pytest

from qlbench.analysis import efficiency
from qlbench.quant.memory import format_bytes

MB = 2**20


def _cell(bits, seed, peak, weight, step, quantized, fmt="nf", dq=True, base_dtype="auto", device="cpu (2 threads)"):
    settings = {"double_quant": dq, "group_size": None, "base_dtype": base_dtype}
    return {"model": "m", "backend": "fake", "format": fmt, "bits": bits, "rank": 8, "mask": "all", "targets": "qv",
            "seed": seed, "step_time_s": step, "tokens_per_s": 1000 / step, "peak_mem_mb": peak,
            "weight_mem_mb": weight, "bits_per_param": 1.0, "trainable_params": 10, "base_params": 100 * MB,
            "quantized_params": quantized, "device": device, "settings_json": json.dumps(settings)}


def test_reduction_speed_and_predicted_bytes_by_hand():
    cells = pl.DataFrame([
        _cell(16, 0, 1000.0, 400.0, 0.10, 0), _cell(16, 1, 1000.0, 400.0, 0.10, 0),
        _cell(4, 0, 600.0, 120.0, 0.14, 80 * MB), _cell(4, 1, 600.0, 120.0, 0.16, 80 * MB),
    ])
    t = efficiency.table(cells)
    ref, nf4 = t.filter(pl.col("bits") == 16).row(0, named=True), t.filter(pl.col("bits") == 4).row(0, named=True)
    assert ref["mem_reduction_pct"] == 0.0 and ref["relative_speed"] == 1.0
    assert nf4["mem_reduction_pct"] == pytest.approx(40.0)  # 1 - 600/1000
    assert nf4["weight_mem_reduction_pct"] == pytest.approx(70.0)  # 1 - 120/400
    assert nf4["relative_speed"] == pytest.approx(100 / 150)  # median step 150 ms against 100 ms
    # 20M unquantized parameters at the reference's 4 bytes, 80M at 0.5 + 1/64 + 4/(256*64) bytes
    assert nf4["predicted_weight_mem_mb"] == pytest.approx(20 * 4 + 80 * (0.5 + 1 / 64 + 4 / 16384), rel=1e-12)
    assert nf4["base_dtype"] == "float32" and nf4["cells"] == 2


def test_qlora_count_equals_the_stored_bytes_where_blocks_divide_evenly():
    # 1024 x 256: 4096 blocks of 64, 16 blocks of 256 scales, so no rounding up anywhere
    numel = 1024 * 256
    for dq in (False, True):
        per = efficiency.bytes_per_quantized_param(4, "nf", "bnb", None, dq)
        assert per * numel == format_bytes((1024, 256), 4, "nf", double_quant=dq)
    # QLoRA's paper: the scales cost 32/64 = 0.5 bits per parameter, 8/64 + 32/(64*256) = 0.127 with double quant
    assert (efficiency.bytes_per_quantized_param(4, "nf", "bnb", None, False) - 0.5) * 8 == 0.5
    assert (efficiency.bytes_per_quantized_param(4, "nf", "bnb", None, True) - 0.5) * 8 == pytest.approx(0.127, abs=5e-4)
    assert efficiency.bytes_per_quantized_param(8, "int", "fake", None, False) is None  # per-channel scales


def test_auto_base_dtype_is_bf16_on_a_gpu_and_fp32_on_a_cpu():
    s = json.dumps({"base_dtype": "auto"})
    assert efficiency.base_dtype(s, "cpu (2 threads)") == "float32"
    assert efficiency.base_dtype(s, "NVIDIA H100 80GB HBM3") == "bfloat16"
    assert efficiency.base_dtype(json.dumps({"base_dtype": "float16"}), "cpu (2 threads)") == "float16"
    assert efficiency.base_dtype(json.dumps({}), "cpu") is None


def test_the_reference_is_the_16_bit_base_when_there_is_one():
    cells = pl.DataFrame([
        _cell(16, 0, 2000.0, 800.0, 0.10, 0, base_dtype="float32"),
        _cell(16, 0, 1000.0, 400.0, 0.05, 0, base_dtype="bfloat16"),
        _cell(4, 0, 600.0, 120.0, 0.10, 80 * MB, base_dtype="bfloat16"),
    ])
    t = efficiency.table(cells)
    nf4 = t.filter(pl.col("bits") == 4).row(0, named=True)
    assert nf4["mem_reduction_pct"] == pytest.approx(40.0) and nf4["relative_speed"] == pytest.approx(0.5)
    fp32 = t.filter((pl.col("bits") == 16) & (pl.col("base_dtype") == "float32")).row(0, named=True)
    assert fp32["mem_reduction_pct"] == pytest.approx(-100.0)  # the fp32 base takes twice a real 16-bit one
