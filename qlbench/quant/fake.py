"""Simulated quantization: each planned weight is replaced, in place, by its quantize-dequantize image.

The base stays in float, so any width (2-8) and format can be studied on any device; the LoRA loop then trains
against exactly the rounded weights a real low-bit kernel would use.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import out_in, quantize
from qlbench.quant.memory import format_bytes
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

BACKEND = Backend(
    name="fake",
    summary="simulated quantize-dequantize in float: any width, any format, any device",
    widths={"int": (2, 3, 4, 5, 6, 7, 8), "nf": (2, 3, 4, 5, 6, 7, 8), "fp": (4,)},
    requantizes=True,  # the weights stay float: a module is re-rounded from its kept weights at another width
    group_sizes="int: per output channel (0) or groups of any size; nf/fp: blocks of any size (64)",
    bytes_per_param="blockwise",  # it counts the bytes the format would take as bitsandbytes stores it (quant.memory)
)


def dequantized_weight(module) -> torch.Tensor:
    """What a quantized module computes with, as an (out, in) float tensor: its rounded float weight."""
    return out_in(module, module.weight.detach()).float()


@torch.no_grad()
def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree (`qlbench.study.settings.Settings`); the format is its `quant`."""
    quant = settings.quant
    modules = dict(model.named_modules())
    stats = []
    for name, bits in plan.items():
        module = modules[name]
        w = module.weight.data
        w_rows = out_in(module, w)
        wq = quantize(w_rows, bits, quant.format, quant.symmetric, quant.group_size, quant.double_quant)
        row = error_stats(name, bits, w_rows, wq)
        row["weight_bytes"] = format_bytes(tuple(w_rows.shape), bits, quant.format, quant.symmetric,
                                           quant.group_size, quant.double_quant)
        stats.append(row)
        w.copy_(out_in(module, wq))
    return stats
