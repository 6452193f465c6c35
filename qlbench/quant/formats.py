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


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map()`: 7 exponent bits), the 256 values double
    quantization stores the absmax scales with (Dettmers et al. 2016, "8-bit approximations"), sorted."""
    data = []
    for i in range(7):  # exponent 10^(i-6); fewer fraction bits as the exponent grows
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()  # in fp32, as bnb
    data += [0, 1.0]  # no extra all-zero-exponent items at 7 exponent bits: 2 * 127 + 2 = 256 values
    return torch.tensor(sorted(data), dtype=torch.float32)


def _dynamic_index(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the code value bitsandbytes picks for each value in [-1, 1], as its kernel on that device does.
    The CPU kernel looks the value up in a 65,536-bin table of nearest codes (bin i holds -1 + 2i/65535, the value
    goes to the nearest bin), so a value within half a bin of a midpoint may go to its second-nearest code."""
    if scaled.device.type != "cpu":
        return _dynamic_index_cuda(scaled, code)
    mids = (code[1:] + code[:-1]) * 0.5
    bins = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32, device=scaled.device)) / 65535.0
    table = torch.searchsorted(mids, bins)  # how many midpoints lie strictly below each bin
    t = (scaled.clamp(-1.0, 1.0) + 1.0) * 0.5 * 65535.0 + 0.5  # fp32 throughout, as the kernel
    return table[t.long()]


def _dynamic_index_cuda(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel's rule (`dQuantize`): a 7-step binary search from the middle code, then the nearer of the
    last value and the tightest bound seen, a tie going to the value the search ended on. Untested against a GPU:
    none was lent when this was written (the CPU tests check only that it picks a nearest code)."""
    pivot = torch.full_like(x, 127, dtype=torch.long)
    lower_pivot, upper_pivot = torch.zeros_like(pivot), torch.full_like(pivot, 255)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        above = x > val
        lower_pivot = torch.where(above, pivot, lower_pivot)
        upper_pivot = torch.where(above, upper_pivot, pivot)
        pivot = torch.where(above, pivot + step, pivot - step)
        val = code[pivot]
    above = x > val
    up = torch.where(x > (code[upper_pivot] + val) * 0.5, upper_pivot, pivot)
    down = torch.where(x < (code[lower_pivot] + val) * 0.5, lower_pivot, pivot)
    return torch.where(above, up, down)


def double_quantize(absmax: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The blockwise scales as bitsandbytes keeps them under double quantization (`compress_statistics=True`),
    dequantized: minus their mean, in blocks of `block`, each to its 8-bit dynamic code times the block's absmax,
    plus the mean again. Bit for bit what `dequantize_4bit` multiplies the 4-bit codes by."""
    flat = absmax.reshape(-1)
    offset = flat.mean()
    centred = flat - offset
    pad = (-centred.numel()) % block
    x = torch.nn.functional.pad(centred, (0, pad)).view(-1, block)
    scale = x.abs().amax(dim=1, keepdim=True)
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    code = dynamic_code().to(flat.device)
    deq = code[_dynamic_index(x * inv, code)] * scale
    return (deq.reshape(-1)[: flat.numel()] + offset).view_as(absmax)


def quantize_blockwise(w: torch.Tensor, code: torch.Tensor, block: int = 64, double_quant: bool = False) -> torch.Tensor:
    """Blockwise absmax over the flattened tensor, each value to its nearest code value (as bitsandbytes); with
    `double_quant`, the values are rebuilt from the 8-bit-quantized absmax, as bitsandbytes does."""
    flat = w.detach().float().reshape(-1)
    code = code.to(flat.device)
    pad = (-flat.numel()) % block
    x = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = x.abs().amax(dim=1, keepdim=True)
    # as bitsandbytes: whole blocks times the reciprocal of their absmax, a ragged last block divided by it
    # (the two differ in the last bit, and a value on a midpoint then goes to the other code)
    scaled = x * (1.0 / absmax.clamp_min(1e-38))
    if pad:
        scaled[-1] = x[-1] / absmax[-1].clamp_min(1e-38)
    # nearest code value via midpoints: searchsorted is exact and O(n log k) in memory
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.searchsorted(mids, scaled.contiguous(), right=False)
    # the codes are chosen with the exact absmax; only the scale they are multiplied by is double-quantized
    deq = code[idx] * (double_quantize(absmax) if double_quant else absmax)
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


def quantize(w: torch.Tensor, bits: int, fmt: str, symmetric: bool = True, group_size: int | None = None,
             double_quant: bool = False):
    """One entry point for every simulated format (`double_quant` applies to the blockwise ones, as in bitsandbytes)."""
    if fmt == "int":
        return quantize_int(w, bits, symmetric, group_size or 0)
    return quantize_blockwise(w, code_for(fmt, bits), group_size or 64, double_quant)


def is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def out_in(module, weight: torch.Tensor) -> torch.Tensor:
    """A module's weight as (out_features, in_features): GPT-2's Conv1D stores it as (in, out)."""
    return weight.t() if is_conv1d(module) else weight


def as_linear(module) -> torch.nn.Linear:
    """The module as an nn.Linear with an (out, in) weight (GPT-2's Conv1D holds (in, out): transposed), same
    values, bias, device and dtype — what quantizers that walk `nn.Linear` (HQQ, torchao) can see."""
    if type(module) is torch.nn.Linear:
        return module
    w = out_in(module, module.weight.detach()).contiguous()
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    if module.bias is not None:
        linear.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return linear


def set_module(model, name: str, new) -> None:
    """Put `new` where the module called `name` is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_module(module, weight: torch.Tensor, bits: int, quant) -> torch.Tensor:
    """A module's weight quantize-dequantized, back in its own storage layout (channels and blocks as nn.Linear's);
    `quant`: the format (`qlbench.study.settings.Quant`)."""
    rows = out_in(module, weight.detach())
    q = quantize(rows, bits, quant.format, quant.symmetric, quant.group_size, quant.double_quant)
    return out_in(module, q).contiguous()
