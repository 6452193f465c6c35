"""Quantize-dequantize a weight tensor in the simulated formats: int min-max, NF-k and FP4 blockwise absmax.

All functions take and return a float tensor of the same shape, in (out_features, in_features) layout, so blocks
and channels match what bitsandbytes does to an nn.Linear weight.
"""

from __future__ import annotations

import torch

# The 16 NF4 code values of bitsandbytes (QLoRA, Dettmers et al. 2023), exactly as it stores them.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# bitsandbytes' FP4 (e2m1) code values, already divided by their maximum.
FP4_CODE = (
    0.0, 0.0052083333, 0.6666666667, 1.0, 0.3333333333, 0.5, 0.1666666667, 0.25,
    -0.0, -0.0052083333, -0.6666666667, -1.0, -0.3333333333, -0.5, -0.1666666667, -0.25,
)
NF_OFFSET = 0.9677083  # QLoRA's offset: the outermost quantile used for the normal-float grid


def nf_code(bits: int) -> torch.Tensor:
    """The 2^bits normal-float code values in [-1, 1]: equal-area quantiles of N(0, 1), with an exact zero."""
    if bits == 4:
        return torch.tensor(NF4_CODE, dtype=torch.float32)
    half = 2 ** (bits - 1)
    pos = torch.special.ndtri(torch.linspace(NF_OFFSET, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(NF_OFFSET, 0.5, half, dtype=torch.float64)[:-1])
    code = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (code / code.abs().max()).to(torch.float32)


def code_for(fmt: str, bits: int) -> torch.Tensor:
    if fmt == "nf":
        return nf_code(bits)
    if fmt == "fp" and bits == 4:
        return torch.tensor(sorted(set(FP4_CODE)), dtype=torch.float32)
    raise ValueError(f"no {fmt}{bits} code")


def quantize_blockwise(w: torch.Tensor, code: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Blockwise absmax over the flattened tensor, each value to its nearest code value (as bitsandbytes)."""
    flat = w.detach().float().reshape(-1)
    code = code.to(flat.device)
    pad = (-flat.numel()) % block
    x = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = x.abs().amax(dim=1, keepdim=True)
    scaled = x / absmax.clamp_min(torch.finfo(torch.float32).tiny)
    # nearest code value via midpoints: searchsorted is exact and O(n log k) in memory
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.searchsorted(mids, scaled.contiguous(), right=False)
    deq = code[idx] * absmax
    return deq.reshape(-1)[: flat.numel()].view_as(w).to(w.dtype)


def quantize_int(w: torch.Tensor, bits: int, symmetric: bool = True, group_size: int = 0) -> torch.Tensor:
    """Min-max integer quantization per output channel (row), or per group of `group_size` inputs in a row."""
    x = w.detach().float()
    rows = x.reshape(x.shape[0], -1)
    if group_size:
        if rows.shape[1] % group_size:
            raise ValueError(f"group size {group_size} does not divide {rows.shape[1]} inputs")
        rows = rows.reshape(-1, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
        deq = torch.clamp(torch.round(rows / scale), -qmax, qmax) * scale
    else:
        lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        deq = (torch.clamp(torch.round(rows / scale) + zero, 0, 2**bits - 1) - zero) * scale
    return deq.reshape(w.shape).to(w.dtype)


def quantize(w: torch.Tensor, bits: int, fmt: str, symmetric: bool = True, group_size: int | None = None):
    """One entry point for every simulated format."""
    if fmt == "int":
        return quantize_int(w, bits, symmetric, group_size or 0)
    return quantize_blockwise(w, code_for(fmt, bits), group_size or 64)


def is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def out_in(module, weight: torch.Tensor) -> torch.Tensor:
    """A module's weight as (out_features, in_features): GPT-2's Conv1D stores it as (in, out)."""
    return weight.t() if is_conv1d(module) else weight


def quantize_module(module, weight: torch.Tensor, bits: int, settings: dict) -> torch.Tensor:
    """A module's weight quantize-dequantized, back in its own storage layout (channels and blocks as nn.Linear's)."""
    rows = out_in(module, weight.detach())
    q = quantize(rows, bits, settings["format"], settings["symmetric"], settings["group_size"])
    return out_in(module, q).contiguous()
