"""The torchao backend: the planned linears hold torchao's own quantized tensors — int8 weight-only
(`Int8WeightOnlyConfig` through `quantize_`: an `Int8Tensor`, symmetric absmax per row, or per group of `group_size`)
and NF4 (`NF4Tensor`, QLoRA's format as torchtune's QLoRA uses it: blocks of `group_size` (64 when unset) with the
block scales quantized again to int8 in blocks of 256, always).

GPT-2's `Conv1D` is first turned into an (out, in) `nn.Linear` (torchao quantizes only `nn.Linear`). peft wraps an
`Int8Tensor` linear as its `TorchaoLoraLinear`; an NF4 linear is a plain `nn.Linear` whose weight dequantizes in its
`F.linear`, so peft's ordinary LoRA layer trains on it. torchao's int4 weight-only has no CPU path in 0.18 (the
plain and preshuffled layouts need the `mslk` kernels, plain_int32 refuses the CPU, tile_packed_to_4d needs CUDA),
so int4 is not declared here.
"""

from __future__ import annotations

import math

import torch

from qlbench.quant.formats import as_linear, set_module
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

BACKEND = Backend(
    name="torchao",
    summary="torchao: int8 weight-only (Int8WeightOnlyConfig, Int8Tensor) and NF4 (NF4Tensor, as torchtune's QLoRA)",
    widths={"int": (8,), "nf": (4,)},
    linear_layout=True,
    group_sizes="int8: per row (unset or 0) or groups of group_size; NF4: blocks of group_size (64), scales in 256s",
    unavailable={"int": {4: "no CPU path in torchao 0.18: Int4WeightOnlyConfig's plain and preshuffled packings raise "
                            "'Requires mslk >= 1.0.0' (the registry has only a 0.0.0 placeholder), plain_int32 'does "
                            "not support device cpu', tile_packed_to_4d 'Torch not compiled with CUDA enabled'"}},
)

NF4_BLOCK = 64  # QLoRA's and torchtune's block size
NF4_SCALER_BLOCK = 256  # torchao quantizes the fp32 block scales to int8 in blocks of this many
LOOKUP_TABLES = ("nf4",)  # the 16 NF4 levels every NF4Tensor carries: a format constant, not the weight's storage


def _torchao():
    try:
        import torchao.quantization as quantization
    except ImportError as e:
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"backend 'torchao' needs torchao: pip install torchao ({e})") from None
    return quantization


def int8_config(quant):
    """torchao's weight-only int8 config for the settings' `Quant` group: per row, or per group of group_size."""
    from torchao.quantization.granularity import PerGroup, PerRow

    return _torchao().Int8WeightOnlyConfig(granularity=PerGroup(quant.group_size) if quant.group_size else PerRow())


def scaler_block(n_blocks: int) -> int:
    """The scales' block: 256, or the largest power of two that divides the block count when 256 does not (torchao
    needs whole blocks; a small model's 192 blocks take 64)."""
    return math.gcd(n_blocks, NF4_SCALER_BLOCK)


def to_nf4(weight: torch.Tensor, quant):
    """An (out, in) weight as torchao's NF4Tensor."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4 as nf4

    block = quant.group_size or NF4_BLOCK
    return nf4(weight.contiguous(), block, scaler_block(weight.numel() // block))


def dequantized(weight) -> torch.Tensor:
    """What a torchao weight computes with, as a float (out, in) tensor."""
    if hasattr(weight, "get_original_weight"):  # NF4Tensor
        return weight.get_original_weight().float()
    return weight.dequantize().float()


def dequantized_weight(module) -> torch.Tensor:
    """What a quantized linear computes with, as an (out, in) float tensor."""
    return dequantized(module.weight)


def held_bytes(weight) -> int:
    """Bytes the quantized weight really holds: its inner tensors (codes, scales, zero points, quantized scales)."""
    names, _ = weight.__tensor_flatten__()
    return sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in names if n not in LOOKUP_TABLES)


@torch.no_grad()
def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree; its `quant.format` picks int8 (`int`) or NF4 (`nf`)."""
    quantization = _torchao()
    quant = settings.quant
    originals = {}
    for name in plan:
        linear = as_linear(model.get_submodule(name))
        originals[name] = linear.weight.detach().float().clone()
        if quant.format == "nf":
            linear.weight = torch.nn.Parameter(to_nf4(linear.weight.detach(), quant), requires_grad=False)
        set_module(model, name, linear)
    int8 = {name for name, bits in plan.items() if quant.format == "int" and bits == 8}
    if int8:
        quantization.quantize_(model, int8_config(quant), filter_fn=lambda _, fqn: fqn in int8)
    stats = []
    for name, bits in plan.items():
        weight = model.get_submodule(name).weight
        row = error_stats(name, bits, originals[name], dequantized(weight).to(originals[name].device))
        row.update(format="int8" if name in int8 else "nf4", weight_bytes=held_bytes(weight))
        stats.append(row)
    return stats
