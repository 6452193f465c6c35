"""The HQQ backend: the planned linears become the `hqq` package's own `HQQLinear` (half-quadratic quantization).

HQQ is an asymmetric integer grid (a scale and a zero point per group) whose scales and zeros are fitted by a few
proximal steps instead of taken from min-max, so it needs no calibration data. Its widths are 1, 2, 3, 4 and 8 bits
(packed into uint8 / int32 words); groups of `group_size` weights (64 when unset, transformers' `HqqConfig` default;
0: one group per row) along `hqq_axis` (1, hqq's default: groups run along the input dimension). `symmetric` does
not apply (HQQ always has a zero point). transformers 5.24 cannot load `HqqConfig` models, so this calls hqq
directly, as `AutoHQQHFModel.quantize_model` does; GPT-2's `Conv1D` is first turned into an (out, in) `nn.Linear`
(hqq quantizes only `nn.Linear`). peft wraps an `HQQLinear` as its `HqqLoraLinear`.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import as_linear, set_module
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

BACKEND = Backend(
    name="hqq",
    summary="HQQ (the hqq package): HQQLinear, asymmetric int 1/2/3/4/8 bits with fitted scales and zeros, any device",
    widths={"int": (1, 2, 3, 4, 8)},
    linear_layout=True,
    group_sizes="groups of group_size along hqq_axis (64 when unset; 0: a whole row, or column with hqq_axis 0)",
)

DEFAULT_GROUP = 64  # transformers' HqqConfig and hqq's BaseQuantizeConfig default


def _hqq():
    try:
        from hqq.core import quantize
    except ImportError as e:
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"backend 'hqq' needs hqq: pip install hqq ({e})") from None
    return quantize


def quant_config(bits: int, quant) -> dict:
    """hqq's own config for one width (`quant`: the settings' `Quant` group)."""
    group = DEFAULT_GROUP if quant.group_size is None else (quant.group_size or None)
    return _hqq().BaseQuantizeConfig(nbits=bits, group_size=group, axis=quant.hqq_axis)


def dequantized_weight(module) -> torch.Tensor:
    """What an HQQLinear computes with, as an (out, in) float tensor."""
    return module.dequantize().float()


def held_bytes(module) -> int:
    """Bytes the quantized weight really occupies: the packed codes plus every scale and zero point hqq keeps."""
    tensors = [module.W_q] + [v for v in module.meta.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree; widths, group size and axis from its `quant`. The weights are quantized
    on the device they are on, in their dtype (the compute dtype of the dequantized weight)."""
    hqq = _hqq()
    modules = dict(model.named_modules())
    stats = []
    for name, bits in plan.items():
        linear = as_linear(modules[name])
        w = linear.weight.detach().float().clone()
        new = hqq.HQQLinear(linear, quant_config(bits, settings.quant), compute_dtype=linear.weight.dtype,
                            device=str(linear.weight.device), del_orig=True)
        set_module(model, name, new)
        row = error_stats(name, bits, w, new.dequantize().float())
        row.update(format=f"hqq{bits}", weight_bytes=held_bytes(new))
        stats.append(row)
    return stats
