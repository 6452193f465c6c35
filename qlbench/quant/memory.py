"""How many bytes a quantized base holds: `weight_mem_mb`.

The bnb backend reports what its modules really hold (packed codes + scales); the fake backend keeps float weights,
so it reports what the format would take at that width, counted the way bitsandbytes stores it (fp32 scales; with
double quant, 8-bit scales plus one fp32 scale per 256 of them). The two agree exactly for NF4/FP4.
"""

from __future__ import annotations

import math

DQ_BLOCK = 256  # bitsandbytes quantizes the absmax scales in blocks of 256 when double_quant is on


def format_bytes(shape: tuple[int, int], bits: int, fmt: str, symmetric: bool = True, group_size: int | None = None,
                 double_quant: bool = False) -> int:
    """Bytes of an (out, in) weight stored at `bits` in a format: the codes, packed, plus their scales."""
    out_f, in_f = shape
    numel = out_f * in_f
    codes = math.ceil(numel * bits / 8)
    if fmt == "int":
        n_scales = numel // group_size if group_size else out_f
        per_scale = 4 if symmetric else 8  # fp32 scale, and an fp32 zero point when asymmetric
        return codes + n_scales * per_scale
    n_blocks = math.ceil(numel / (group_size or 64))
    if double_quant:
        return codes + n_blocks + 4 * math.ceil(n_blocks / DQ_BLOCK)
    return codes + 4 * n_blocks


def weight_mem_mb(model, stats: list[dict]) -> float:
    """The base's weights in MiB: every parameter at its dtype, except the quantized ones at `weight_bytes` (a
    quantized module's parameters other than its bias — bnb's `weight`, hqq's `W_q`, torchao's tensor subclasses —
    are what `weight_bytes` counts; a bias a quantizer keeps as a plain tensor, as hqq does, is counted here)."""
    import torch

    quantized = {m["module"] for m in stats}
    seen, total = set(), 0
    for name, p in model.named_parameters():  # tied weights appear once
        owner, _, leaf = name.rpartition(".")
        if owner in quantized and leaf != "bias":
            continue
        key = (p.device, p.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += p.numel() * p.element_size()
    for name in quantized:
        bias = getattr(model.get_submodule(name), "bias", None)
        if torch.is_tensor(bias) and not isinstance(bias, torch.nn.Parameter):
            total += bias.numel() * bias.element_size()
    return (total + sum(m["weight_bytes"] for m in stats)) / 2**20
