"""Simulated quantization: each planned weight is replaced, in place, by its quantize-dequantize image.

The base stays in float, so any width (2-8) and format can be studied on any device; the LoRA loop then trains
against exactly the rounded weights a real low-bit kernel would use.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import out_in, quantize
from qlbench.quant.memory import format_bytes
from qlbench.quant.stats import error_stats


@torch.no_grad()
def apply(model, plan: dict[str, int], settings: dict) -> list[dict]:
    modules = dict(model.named_modules())
    stats = []
    for name, bits in plan.items():
        module = modules[name]
        w = module.weight.data
        w_rows = out_in(module, w)
        wq = quantize(w_rows, bits, settings["format"], settings["symmetric"], settings["group_size"],
                      settings["double_quant"])
        row = error_stats(name, bits, w_rows, wq)
        row["weight_bytes"] = format_bytes(tuple(w_rows.shape), bits, settings["format"], settings["symmetric"],
                                           settings["group_size"], settings["double_quant"])
        stats.append(row)
        w.copy_(out_in(module, wq))
    return stats
