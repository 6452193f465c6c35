"""The HQQ backend against hqq's own model path: the micro GPT-2 quantized by qlbench computes exactly the logits of
the same model quantized by `AutoHQQHFModel.quantize_model` (after the test's own Conv1D -> Linear), at each width,
group size and axis; its layers really are `HQQLinear`; LoRA trains through peft's `HqqLoraLinear` on the CPU."""

from __future__ import annotations

import pytest
import torch

from qlbench.errors import QlbenchError
from qlbench.study.settings import tree

from conftest import assert_lora_trains

hqq_quantize = pytest.importorskip("hqq.core.quantize")
from hqq.models.hf.base import AutoHQQHFModel  # noqa: E402

from qlbench.quant import hqq as qhqq  # noqa: E402
from qlbench.quant.memory import weight_mem_mb  # noqa: E402

LINEARS = ("c_attn", "c_proj", "c_fc")


def _micro(resources):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resources / "models/micro-gpt2").eval()


def _names(model):
    return [n for n, _ in model.named_modules() if n.endswith(LINEARS)]


def _hqq_own(model, configs: dict):
    """hqq's path, written here on its own: each Conv1D becomes an nn.Linear holding its transpose, then
    AutoHQQHFModel quantizes the linears by tag (`attn.c_attn` ... : a BaseQuantizeConfig, or None to leave one)."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "Conv1D":
            linear = torch.nn.Linear(*module.weight.shape)
            linear.weight.data, linear.bias.data = module.weight.data.t().contiguous(), module.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    configs = {f"transformer.h.{tag}": cfg for tag, cfg in configs.items()}
    AutoHQQHFModel.quantize_model(model, quant_config=configs, compute_dtype=torch.float32,
                                  device={n: "cpu" for n, _ in model.named_modules() if n})  # GPT-2: no model.layers
    return model


def _cfg(bits, group, axis):
    return hqq_quantize.BaseQuantizeConfig(nbits=bits, group_size=group, axis=axis)


X = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(0))


# (qlbench's settings) -> (hqq's own config for the same thing): group_size unset is 64, 0 is a whole row/column
CASES = [
    (4, {}, (4, 64, 1)),
    (2, {"group_size": 32, "hqq_axis": 0}, (2, 32, 0)),
    (3, {"group_size": 0}, (3, None, 1)),
    (8, {"group_size": 128}, (8, 128, 1)),
    (1, {"group_size": 16}, (1, 16, 1)),
]


@pytest.mark.parametrize("bits,settings,own", CASES, ids=[f"{c[0]}bit-{c[2][1]}-axis{c[2][2]}" for c in CASES])
def test_hqq_cell_quantizes_as_hqq_itself(micro_resources, bits, settings, own):
    ours, theirs, unquantized = _micro(micro_resources), _micro(micro_resources), _micro(micro_resources)
    stats = qhqq.apply(ours, {n: bits for n in _names(ours)}, tree(backend="hqq", format="int", **settings))
    _hqq_own(theirs, {tag: _cfg(*own) for tag in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")})
    kinds = {type(ours.get_submodule(n)).__name__ for n in _names(ours)}
    assert kinds == {"HQQLinear"}  # no Conv1D left: every planned layer really changed
    assert type(ours.lm_head) is torch.nn.Linear
    layer = ours.transformer.h[0].attn.c_attn
    assert (layer.meta["nbits"], layer.meta["axis"]) == (bits, own[2])
    with torch.no_grad():
        got, want, full = ours(X).logits, theirs(X).logits, unquantized(X).logits
    assert torch.equal(got, want), (got - want).abs().max()
    assert (got - full).abs().mean() > 1e-4  # the parity is not of two unquantized models
    assert [s["bits"] for s in stats] == [bits] * len(stats) and all(s["quant_mse"] > 0 for s in stats)


def test_hqq_mixed_widths_match_hqq_per_tag_config(micro_resources):
    """A plan of two widths (attention at 2 bits, MLP at 8) is hqq's per-linear-tag config."""
    ours, theirs = _micro(micro_resources), _micro(micro_resources)
    plan = {n: (2 if ".attn." in n else 8) for n in _names(ours)}
    qhqq.apply(ours, plan, tree(backend="hqq", format="int"))
    _hqq_own(theirs, {"attn.c_attn": _cfg(2, 64, 1), "attn.c_proj": _cfg(2, 64, 1),
                      "mlp.c_fc": _cfg(8, 64, 1), "mlp.c_proj": _cfg(8, 64, 1)})
    with torch.no_grad():
        assert torch.equal(ours(X).logits, theirs(X).logits)
    assert ours.transformer.h[1].mlp.c_fc.meta["nbits"] == 8 and ours.transformer.h[1].attn.c_proj.meta["nbits"] == 2


def test_hqq_weight_bytes_are_packed_codes_plus_scales_and_zeros(micro_resources):
    model = _micro(micro_resources)
    full = weight_mem_mb(model, [])
    stats = qhqq.apply(model, {n: 4 for n in _names(model)}, tree(backend="hqq", format="int"))
    by_name = {s["module"]: s["weight_bytes"] for s in stats}
    # c_attn: 64 x 192 at 4 bits = 6144 bytes of codes; 192 groups of 64, an fp32 scale and zero each
    assert by_name["transformer.h.0.attn.c_attn"] == 64 * 192 // 2 + 192 * 2 * 4
    params = sum(p.numel() for p in _micro(micro_resources).parameters())  # the tied lm_head once
    quantized = sum(s["numel"] for s in stats)
    assert weight_mem_mb(model, stats) * 2**20 == 4 * (params - quantized) + sum(by_name.values())
    assert weight_mem_mb(model, stats) < 0.5 * full


def test_lora_trains_through_peft_hqq_layer(micro_resources):
    from qlbench.cell.lora import attach

    settings = tree(backend="hqq", format="int", targets=["c_attn", "c_fc"])
    model = _micro(micro_resources)
    qhqq.apply(model, {n: 3 for n in _names(model)}, settings)
    peft_model = attach(model, 2, settings, "gpt2")
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert type(layer).__name__ == "HqqLoraLinear" and layer.fan_in_fan_out is False
    assert_lora_trains(peft_model, X)


def test_hqq_widths_in_the_config():
    from qlbench.study.config import check_settings

    settings = {"backend": "hqq", "format": "int", "high_bits": 16, "adapter_bits": 16}
    check_settings(settings, [16, 8, 4, 3, 2, 1], "studies.x")
    with pytest.raises(QlbenchError, match="cannot quantize 'int' at 5 bits"):
        check_settings(settings, [5], "studies.x")
    with pytest.raises(QlbenchError, match="cannot quantize 'nf' at 4 bits"):
        check_settings({**settings, "format": "nf"}, [4], "studies.x")
