"""LoftQ initialisation (`lora_init: loftq`) against a known answer: on the micro GPT-2, the model a LoftQ cell starts
training from is closer to the full-precision base than the default init's, module by module — measured here by
hand from the weights the model really holds (W from disk, Q the quantized base, s·B·A the adapter), with the
backend's own quantizer for the default — and the cell's recorded initial error is that number."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from conftest import CONFIGS
from qlbench.study import config as studylib
from qlbench.study.grid import Cell

STUDY = "micro"


def _stages(tmp_path, bits, **overrides):
    """The first stages of a cell, in this process: (ctx, base, quantized, model)."""
    from qlbench.cell.attach import attach
    from qlbench.cell.context import begin
    from qlbench.cell.load import load
    from qlbench.cell.quantize import quantize

    st = studylib.load(studylib.read_config(CONFIGS), STUDY)
    settings = studylib.cell_settings(st, {"steps": 1, **overrides}, bits)
    ctx = begin(st, Cell("micro-gpt2", bits, 4, "all", 0), tmp_path / "cell", settings, 1)
    base = load(ctx)
    quantized = quantize(ctx, base)
    return ctx, base, quantized, attach(ctx, base, quantized)


def _original(resources):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resources / "models/micro-gpt2")


CASES = [(2, {"format": "int"}), (3, {"format": "int"}), (4, {"format": "int"}), (3, {"format": "nf"}),
         (4, {"format": "nf", "backend": "bnb"}), (2, {"format": "int", "backend": "hqq"}),
         (3, {"format": "int", "loftq_iter": 3})]


@pytest.mark.parametrize("bits,overrides", CASES, ids=[f"{b}bit-{'-'.join(map(str, o.values()))}" for b, o in CASES])
def test_loftq_starts_closer_to_the_full_precision_weight(tmp_path, micro_resources, monkeypatch, bits, overrides):
    from qlbench import quant
    from qlbench.quant.formats import out_in
    from qlbench.quant.loftq import image

    monkeypatch.chdir(micro_resources.parent)
    ctx, base, quantized, model = _stages(tmp_path, bits, lora_init="loftq", **overrides)
    original = _original(micro_resources)
    backend = quant.backend(ctx.settings.quant.backend)
    stats = {r["module"]: r for r in quantized.stats}
    adapted = [n for n in quantized.plan if n.endswith("c_attn")]  # the micro study's LoRA target
    assert adapted and sorted(quantized.loftq) == adapted
    for name in adapted:
        layer = model.get_submodule(f"base_model.model.{name}")
        w = out_in(original.get_submodule(name), original.get_submodule(name).weight.detach()).float()
        q = backend.dequantized_weight(layer.base_layer).float()
        ba = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        loftq_error = (w - (q + ba)).norm().item()
        plain = image(original.get_submodule(name), w, bits, ctx.settings, backend)  # the default init's Q(W)
        default_error = (w - plain).norm().item()
        assert loftq_error < 0.99 * default_error, (name, loftq_error, default_error)
        assert stats[name]["init_error"] == pytest.approx(loftq_error, rel=1e-4)
        assert stats[name]["init_error_default"] == pytest.approx(default_error, rel=1e-4)
        assert stats[name]["quant_mse"] == pytest.approx((w - q).pow(2).mean().item(), rel=1e-4)  # against W
    for name in set(quantized.plan) - set(adapted):  # no adapter there: the default's error, B = 0
        assert stats[name]["init_error"] == stats[name]["init_error_default"]


def test_a_loftq_cell_and_a_default_cell_differ(tmp_path, micro_resources, monkeypatch):
    from qlbench.cell import evaluate

    monkeypatch.chdir(micro_resources.parent)
    runs = {}
    for init in ("default", "loftq"):
        ctx, base, quantized, model = _stages(tmp_path / init, 3, lora_init=init)
        layers = pl.DataFrame(quantized.stats)
        runs[init] = (ctx.config_hash, evaluate.before_training(ctx, model, base), layers)
    (h_default, before_default, default), (h_loftq, before_loftq, loftq) = runs["default"], runs["loftq"]
    assert h_default != h_loftq and before_default != before_loftq
    joined = default.join(loftq, on="module", suffix="_loftq")
    assert (joined["init_error_default_loftq"] - joined["init_error"]).abs().max() < 1e-4  # the same Q(W)
    target = joined.filter(pl.col("module").str.ends_with("c_attn"))
    assert (target["init_error_loftq"] < target["init_error"]).all()


def test_loftq_is_rejected_with_changing_widths():
    from qlbench.errors import QlbenchError

    with pytest.raises(QlbenchError, match="lora_init loftq"):
        studylib.check_settings({**studylib.DEFAULTS, "lora_init": "loftq", "switch_bits": [4, 8]}, [4], "s")


def test_low_rank_is_the_best_rank_r_fit():
    from qlbench.quant.loftq import low_rank

    g = torch.Generator().manual_seed(0)
    planted = torch.randn(12, 2, generator=g) @ torch.randn(2, 9, generator=g)  # rank 2 exactly
    lo, ro = low_rank(planted, 2)
    assert torch.allclose(lo @ ro, planted, atol=1e-5) and lo.shape == (12, 2) and ro.shape == (2, 9)
    lo, ro = low_rank(planted, 20)  # more than the matrix has: zero directions beyond
    assert lo.shape == (12, 20) and torch.allclose(lo @ ro, planted, atol=1e-5)
