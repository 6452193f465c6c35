"""The bitsandbytes backend against its oracle and its twin: fake NF4/FP4 equal bnb's dequantized weights bit for
bit, a bnb cell's loss before training equals the fake cell's, and the CPU traps of ENVIRONMENT.md stay handled."""

from __future__ import annotations

import os
import subprocess

import polars as pl
import pytest
import torch

from conftest import BIN, CONFIG_ARGS
from qlbench.errors import QlbenchError
from qlbench.quant import bnb as qbnb, fake, formats
from qlbench.study.settings import tree
from qlbench.quant.memory import format_bytes, weight_mem_mb

bnbf = pytest.importorskip("bitsandbytes.functional")
SETTINGS = tree(format="nf", double_quant=False, group_size=None, symmetric=True, compute_dtype="float32")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # a 16-bit base (base_dtype) too
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("fmt,quant_type", [("nf", "nf4"), ("fp", "fp4")])
# whole blocks, a ragged tail, under one block; 48 and 5 (ragged) blocks of 256 scales for double quantization
@pytest.mark.parametrize("shape", [(192, 64), (48, 40), (7, 9), (1024, 768), (300, 257)])
def test_fake_4bit_equals_bitsandbytes_dequantize(fmt, quant_type, shape, double_quant, dtype):
    w = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    assert state.nested is double_quant
    oracle = bnbf.dequantize_4bit(packed, state)
    ours = formats.quantize(w, 4, fmt, double_quant=double_quant)
    assert torch.equal(ours, oracle), (ours - oracle).abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the CUDA kernels' parity is checked where one is lent")
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("fmt,quant_type", [("nf", "nf4"), ("fp", "fp4")])
def test_fake_4bit_equals_bitsandbytes_dequantize_on_cuda(fmt, quant_type, double_quant):
    w = (torch.randn(2048, 768, generator=torch.Generator().manual_seed(0)) * 0.05).cuda()
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    oracle = bnbf.dequantize_4bit(packed, state)
    ours = formats.quantize(w, 4, fmt, double_quant=double_quant)
    assert torch.equal(ours, oracle), (ours - oracle).abs().max()


def test_values_on_a_midpoint_are_scaled_as_bitsandbytes_scales_them():
    """bnb multiplies a block by 1/absmax; dividing differs in the last bit, and these values (found by search)
    then round to the other FP4 code: 0.0 here, 0.0052*absmax when divided."""
    pairs = [(0.00024541333550587296, 0.09423871338367462), (0.0010386297944933176, 0.3988338112831116),
             (0.0004977455828338861, 0.1911342889070511)]
    w = torch.zeros(len(pairs), 64)
    for row, (value, absmax) in enumerate(pairs):
        w[row, 0], w[row, 1] = absmax, value
        v, a = torch.tensor(value), torch.tensor(absmax)
        assert v / a != v * (1 / a)  # the two scalings differ on each
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="fp4")
    assert torch.equal(formats.quantize(w, 4, "fp"), bnbf.dequantize_4bit(packed, state))


def test_double_quantized_scales_are_bitsandbytes_scales():
    """The 8-bit dynamic code is bnb's table, and the rebuilt absmax is what bnb multiplies by, value for value:
    on these scales a plain nearest-code rounding picks the other code for some (bnb's CPU kernel rounds through a
    65,536-bin table), so this fails unless the kernel's rule is reproduced."""
    assert torch.equal(formats.dynamic_code(), bnbf.create_dynamic_map())
    w = torch.randn(2048, 768, generator=torch.Generator().manual_seed(1)) * 0.05
    _, plain = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    _, nested = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    oracle = bnbf.dequantize_blockwise(nested.absmax, nested.state2) + nested.offset
    ours = formats.double_quantize(plain.absmax)
    assert torch.equal(ours, oracle), (ours - oracle).abs().max()
    assert not torch.equal(ours, plain.absmax)  # the scales really were rounded


def _micro(resources):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resources / "models/micro-gpt2")


def _linears(model):
    return [n for n, _ in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))]


def test_bnb_model_computes_what_the_fake_one_does_and_still_trains(micro_resources):
    torch.manual_seed(0)
    x = torch.randint(0, 500, (2, 32))
    real, sim = _micro(micro_resources), _micro(micro_resources)
    plan = {n: 4 for n in _linears(real)}
    stats = qbnb.apply(real, plan, SETTINGS)
    fake.apply(sim, plan, SETTINGS)
    assert type(real.transformer.h[0].attn.c_attn).__name__ == "Linear4bit"
    assert isinstance(real.lm_head, torch.nn.Linear) and type(real.lm_head).__name__ == "Linear"  # trap 2
    assert all(m.support_avx512bf16_for_cpu is False for m in real.modules() if hasattr(m, "support_avx512bf16_for_cpu"))
    real.eval(), sim.eval()
    with torch.no_grad():
        assert torch.allclose(real(x).logits, sim(x).logits, atol=1e-5)
    # trap 1: after an eval forward under no_grad, a training step through LoRA must still work
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(real, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    peft_model.train()
    peft_model(input_ids=x, labels=x).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]  # A has none while B = 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert [s["format"] for s in stats] == ["nf4"] * len(plan)


@pytest.mark.parametrize("fmt,double_quant", [("nf", False), ("nf", True), ("fp", False), ("fp", True)])
def test_bnb_weight_bytes_match_the_format_count(micro_resources, fmt, double_quant):
    model = _micro(micro_resources)
    settings = SETTINGS.replace(format=fmt, double_quant=double_quant)
    stats = qbnb.apply(model, {n: 4 for n in _linears(model)}, settings)
    for s, name in zip(stats, _linears(model)):
        shape = tuple(qbnb.dequantized(model.get_submodule(name)).shape)
        assert s["weight_bytes"] == format_bytes(shape, 4, fmt, double_quant=double_quant)
    assert (model.transformer.h[0].attn.c_attn.weight.quant_state.nested) is double_quant


def test_mixed_mask_4bit_and_llm_int8(micro_resources):
    model, sim = _micro(micro_resources), _micro(micro_resources)
    names = _linears(model)
    plan = {n: (4 if "attn" in n else 8) for n in names}
    full = weight_mem_mb(model, [])
    stats = qbnb.apply(model, plan, SETTINGS)
    kinds = {n: type(model.get_submodule(n)).__name__ for n in names}
    assert kinds == {n: ("Linear4bit" if "attn" in n else "Linear8bitLt") for n in names}
    int8 = [s for s in stats if s["bits"] == 8]
    assert int8 and all(s["format"] == "int8" and s["quant_rel_err"] < 0.01 for s in int8)
    # LLM.int8's weights are row-wise absmax int8 (of an fp16 copy): rounding error of about half a step, as fake int8
    w = sim.transformer.h[0].mlp.c_fc.weight.detach().t()
    deq = qbnb.dequantized(model.transformer.h[0].mlp.c_fc)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    # half a step, plus float32's rounding of w / scale (up to 127, so ~127 ulps of one step) for a weight that sits
    # on a midpoint: 0.5 + 1e-6 steps failed on one machine's base, the rounding bound holds
    half = (0.5 + 128 * torch.finfo(torch.float32).eps) * step
    assert ((deq - w).abs() <= 0.6 * step).all() and ((formats.quantize(w, 8, "int") - w).abs() <= half).all()
    assert (deq - w).pow(2).mean().item() == pytest.approx((formats.quantize(w, 8, "int") - w).pow(2).mean().item(), rel=0.1)
    # the mixed model computes what a float model holding its dequantized weights computes: exactly for the NF4
    # layers, and for LLM.int8 up to its int8 activations (row-wise absmax of the inputs)
    held = _micro(micro_resources)
    with torch.no_grad():
        for n in names:
            target = held.get_submodule(n)
            target.weight.copy_(qbnb.dequantized(model.get_submodule(n)).t())  # Conv1D stores (in, out)
    x = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    model.eval(), held.eval(), sim.eval()
    with torch.no_grad():
        got, want, unquantized = model(x).logits, held(x).logits, sim(x).logits
    # measured: mean |difference| 0.00051 against the held weights (the int8 activations), while the held weights
    # move the logits by 0.0020 from the unquantized ones, so the test tells a wrong dequantization apart
    assert (got - want).abs().mean() < 0.001
    assert (want - unquantized).abs().mean() > 0.0015
    assert weight_mem_mb(model, stats) < full


def test_bnb_rejects_widths_it_cannot_do():
    from qlbench.study.config import check_settings

    settings = {"backend": "bnb", "format": "nf", "high_bits": 16, "adapter_bits": 16}
    check_settings(settings, [16, 8, 4], "studies.x")  # 8 bits with bnb is LLM.int8
    with pytest.raises(QlbenchError, match="cannot quantize 'nf' at 3 bits"):
        check_settings(settings, [4, 3], "studies.x")
    with pytest.raises(QlbenchError, match="cannot quantize 'int' at 4 bits"):
        check_settings({**settings, "format": "int"}, [4], "studies.x")


@pytest.mark.parametrize("double_quant", [False, True])
def test_bnb_cell_loss_before_training_equals_the_fake_cell(tmp_path, micro_resources, double_quant):
    """The issue's parity check, through the CLI: `--set backend=bnb` vs `--set backend=fake`, NF4, with and
    without double quantization (QLoRA's recipe)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {}
    for backend in ("bnb", "fake"):
        cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model", "micro-gpt2",
               "--bits", "4", "--rank", "4", "--mask", "all", "--out", tmp_path / backend,
               "--set", f"backend={backend}", "--set", "format=nf", "--set", "steps=2",
               "--set", "checkpoint_every=0", "--set", "eval_batches=4",
               "--set", f"double_quant={str(double_quant).lower()}"]
        procs[backend] = subprocess.Popen(cmd, cwd=micro_resources.parent, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
    rows = {}
    for backend, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
        rows[backend] = pl.read_parquet(tmp_path / backend / "row.parquet").row(0, named=True)
    assert abs(rows["bnb"]["eval_loss_before"] - rows["fake"]["eval_loss_before"]) < 1e-6
    assert rows["bnb"]["weight_mem_mb"] == pytest.approx(rows["fake"]["weight_mem_mb"], rel=1e-12)
    assert rows["bnb"]["backend"] == "bnb" and rows["fake"]["backend"] == "fake"


def test_fake_weight_bytes_count_codes_and_scales(micro_resources):
    assert format_bytes((192, 64), 8, "int") == 192 * 64 + 4 * 192  # int8 codes + one fp32 scale per row
    assert format_bytes((192, 64), 3, "int", symmetric=False, group_size=32) == 192 * 64 * 3 // 8 + 8 * 384
    assert format_bytes((192, 64), 4, "nf") == 192 * 64 // 2 + 4 * 192
    assert format_bytes((192, 64), 4, "nf", double_quant=True) == 192 * 64 // 2 + 192 + 4
    model = _micro(micro_resources)
    fp32 = weight_mem_mb(model, [])
    assert fp32 * 2**20 == 4 * sum(p.numel() for p in model.parameters())  # the tied lm_head counted once
    stats = fake.apply(model, {n: 8 for n in _linears(model)}, SETTINGS.replace(format="int"))
    saved = sum(4 * s["numel"] - s["weight_bytes"] for s in stats)
    assert weight_mem_mb(model, stats) * 2**20 == pytest.approx(fp32 * 2**20 - saved)
