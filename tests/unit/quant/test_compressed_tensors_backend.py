"""The compressed-tensors backend against compressed-tensors' own numerics: each scheme's dequantized weights equal
the library's fake quantization with the scales its own min-max path computes (`compute_dynamic_scales_and_zp`,
written independently of the backend's `qparams`), bit for bit; widths, group sizes and LoRA on the result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from qlbench.errors import QlbenchError

from conftest import assert_lora_trains

pytest.importorskip("compressed_tensors")
from compressed_tensors.quantization import QuantizationArgs, fake_quantize  # noqa: E402
from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp  # noqa: E402

from qlbench import registry  # noqa: E402
from qlbench.quant import compressed_tensors as ct  # noqa: E402

LINEARS = ("c_attn", "c_proj", "c_fc")


def tiny_gpt2(seed: int = 0):
    """A random GPT-2 whose every linear takes 128 or 512 inputs (groups of 128 fit), in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=256)).eval()


def settings(symmetric=True, group_size=None):
    return SimpleNamespace(quant=SimpleNamespace(symmetric=symmetric, group_size=group_size))


def linears(model):
    return [n for n, _ in model.named_modules() if n.endswith(LINEARS)]


def library_fake_quant(w: torch.Tensor, bits: int, symmetric: bool, group: int) -> torch.Tensor:
    """compressed-tensors alone: per channel as one group spanning the row (the same min-max), its dynamic min-max
    scales and zero points, its fake_quantize."""
    kw = {"strategy": "group", "group_size": group} if group else {"strategy": "channel"}
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, **kw)
    own = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group",
                           group_size=group or w.shape[1])
    scale, zero = compute_dynamic_scales_and_zp(w, own, module=None)
    return fake_quantize(w, scale, zero, args)


# (bits, symmetric, group_size setting) -> the group the scheme gets (0: per channel)
CASES = [(8, True, None, 0), (4, True, None, 128), (8, False, None, 0), (4, False, None, 128),
         (4, True, 32, 32), (8, True, 64, 64), (4, False, 0, 0)]


@pytest.mark.parametrize("bits,symmetric,group_size,group", CASES)
def test_dequantized_weights_are_compressed_tensors_own(bits, symmetric, group_size, group):
    model = tiny_gpt2()
    originals = {n: model.get_submodule(n).weight.detach().t().clone() for n in linears(model)}  # Conv1D: (in, out)
    plan = dict.fromkeys(originals, bits)
    stats = ct.apply(model, plan, settings(symmetric, group_size))
    for name, w in originals.items():
        module = model.get_submodule(name)
        assert type(module) is torch.nn.Linear and module.weight.shape == w.shape  # (out, in), as vLLM holds it
        expected = library_fake_quant(w, bits, symmetric, group)
        assert torch.equal(module.weight, expected), name
        assert not torch.equal(module.weight, w)
    rows = {r["module"]: r for r in stats}
    assert {r["format"] for r in stats} == {f"w{bits}a16"}
    out, inp = originals["transformer.h.0.mlp.c_fc"].shape
    per_row = inp // group if group else 1
    packed = out * inp * bits // 8  # int32 words of codes
    zeros = 0 if symmetric else -(-out // (32 // bits)) * per_row * 4
    assert rows["transformer.h.0.mlp.c_fc"]["weight_bytes"] == packed + out * per_row * 4 + zeros


def test_distinct_levels_per_group_are_at_most_the_width():
    model = tiny_gpt2()
    ct.apply(model, {"transformer.h.0.mlp.c_fc": 4}, settings(group_size=128))
    w = model.get_submodule("transformer.h.0.mlp.c_fc").weight
    groups = w.reshape(w.shape[0], -1, 128)
    assert max(len(torch.unique(g)) for g in groups.reshape(-1, 128)) <= 16


def test_declared_and_listed():
    b = registry.backend("compressed_tensors")
    assert b.widths == {"int": (4, 8)} and b.linear_layout and b.can("int", 4) and not b.can("int", 3)
    assert not b.can("nf", 4)


def test_a_group_that_does_not_divide_the_inputs_is_one_line():
    model = tiny_gpt2()
    with pytest.raises(QlbenchError, match="group size 96 does not divide a layer's 128 inputs"):
        ct.apply(model, {"transformer.h.0.attn.c_attn": 4}, settings(group_size=96))


def test_lora_trains_on_the_dequantized_linears():
    from peft import LoraConfig, get_peft_model

    model = tiny_gpt2()
    ct.apply(model, dict.fromkeys(linears(model), 4), settings())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=False))
    assert_lora_trains(peft_model, torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)))
