"""The compressed-tensors backend: the integer weight schemes vLLM and SGLang load from a compressed-tensors folder —
W8A16 (int8, one scale per output channel) and W4A16 (int4, one scale per group of 128 inputs), symmetric or with
a zero point — computed by compressed-tensors itself (0.20; no llmcompressor).

Its numerics are the library's own: min-max per channel or group taken by hand (compressed-tensors has no observers:
llmcompressor's min-max observer does the same), then `calculate_qparams` for the scales and zero points and its
`quantize` / `dequantize` for the codes and the values they stand for. The planned linears then hold the dequantized
float weights — what vLLM's W8A16/W4A16 kernels compute with — and the cell trains LoRA on them (a compressed-tensors
model runs its packed weights through the same dequantization at each forward; holding them dequantized is the same
arithmetic, once). `qlbench export --format compressed-tensors` writes the folder (`qlbench.export.compressed_tensors`)
with these same scales. GPT-2's `Conv1D` is first turned into an (out, in) `nn.Linear` (compressed-tensors quantizes
only `nn.Linear`; its export becomes the Linear-based GPTBigCode architecture, GPT-2 with `nn.Linear`).

As a deploy format (`deploy: compressed_tensors:w4a16`, `:w8a16`, or bare: each layer at its plan width's scheme),
any cell's merged model is requantized the same way (`deploy`). Group sizes: unset — 8 bits per channel, 4 bits groups of 128 (vLLM's W8A16 and W4A16 presets); 0 — per channel at
every width; N — groups of N inputs at every width (N must divide each planned layer's inputs).
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import as_linear, set_module
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

BACKEND = Backend(
    name="compressed_tensors",
    summary="compressed-tensors (vLLM's W8A16 / W4A16): int8 per channel, int4 per group of 128, sym or asym; the "
            "library's own scales and rounding, weights held dequantized",
    widths={"int": (4, 8)},
    linear_layout=True,
    group_sizes="unset: 8 bits per channel, 4 bits groups of 128; 0: per channel; N: groups of N inputs",
    names={8: "W8A16", 4: "W4A16"},
    names_asymmetric={8: "W8A16 asym", 4: "W4A16 asym"},
    deploys=("w8a16", "w4a16"),
)

PRESETS = {"w8a16": 8, "w4a16": 4}  # `deploy: compressed_tensors:PRESET` -> its width (group, symmetric: the study's)
DEFAULT_GROUP = {4: 128, 8: 0}  # vLLM's W4A16 (group 128) and W8A16 (per channel) presets; 0: per channel


def _ct():
    try:
        from compressed_tensors import quantization
    except ImportError as e:
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"backend 'compressed_tensors' needs compressed-tensors: pip install compressed-tensors "
                           f"({e})") from None
    return quantization


def group_of(bits: int, quant) -> int:
    """The group size a width gets under the settings' `Quant` (0: per output channel)."""
    return DEFAULT_GROUP[bits] if quant.group_size is None else quant.group_size


def args_for(bits: int, quant, in_features: int | None = None):
    """compressed-tensors' `QuantizationArgs` for one width (weights only: activations stay 16-bit)."""
    from qlbench.errors import QlbenchError

    group = group_of(bits, quant)
    if group and in_features is not None and in_features % group:
        raise QlbenchError(f"compressed_tensors: group size {group} does not divide a layer's {in_features} inputs "
                           "(set group_size to a divisor, or 0 for per channel)")
    kw = {"strategy": "group", "group_size": group} if group else {"strategy": "channel"}
    return _ct().QuantizationArgs(num_bits=bits, type="int", symmetric=bool(quant.symmetric), **kw)


def qparams(weight: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of an (out, in) weight: min-max per row (channel) or per group of a row, through
    compressed-tensors' `calculate_qparams` — shapes (out, 1) or (out, in / group), as it stores them."""
    w = weight.detach()
    if args.strategy == "group":
        w = w.reshape(w.shape[0], -1, args.group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    if args.strategy != "group":
        lo, hi = lo.unsqueeze(-1), hi.unsqueeze(-1)
    return _ct().utils.calculate_qparams(lo, hi, args)


def quantize(weight: torch.Tensor, args):
    """(codes, scale, zero point) of an (out, in) weight, as compressed-tensors stores them before packing."""
    scale, zero = qparams(weight, args)
    codes = _ct().quantize(weight.detach(), scale, zero, args, dtype=torch.int8)
    return codes, scale, zero


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, args) -> torch.Tensor:
    return _ct().dequantize(codes, scale, zero, args, dtype=scale.dtype)


def held_bytes(shape: tuple[int, int], args, scale: torch.Tensor, zero: torch.Tensor) -> int:
    """Bytes of the weight as a pack-quantized folder holds it: the codes packed into int32 words along each row,
    the scales in the weight's dtype, and (asymmetric) the zero points packed along the output dimension."""
    out, inp = shape
    per_word = 32 // args.num_bits
    total = out * -(-inp // per_word) * 4 + scale.numel() * scale.element_size()
    if not args.symmetric:
        total += -(-out // per_word) * zero.shape[-1] * 4
    return total


def dequantized_weight(module) -> torch.Tensor:
    """What a quantized linear computes with, as an (out, in) float tensor: its dequantized weight."""
    return module.weight.detach().float()


@torch.no_grad()
def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree; widths' schemes from its `quant` (symmetric, group_size). Each planned
    module becomes an (out, in) Linear holding compressed-tensors' dequantization of its own codes."""
    quant = settings.quant
    stats = []
    for name, bits in plan.items():
        linear = as_linear(model.get_submodule(name))
        w = linear.weight.detach().clone()
        args = args_for(bits, quant, w.shape[1])
        codes, scale, zero = quantize(w, args)
        linear.weight.copy_(dequantize(codes, scale, zero, args).to(w.dtype))
        set_module(model, name, linear)
        row = error_stats(name, bits, w.float(), linear.weight.float())
        scheme = f"w{bits}a16"  # also the layer's type (layers.parquet's module_type, a deploy row's)
        row.update(format=scheme, type=scheme, weight_bytes=held_bytes(tuple(w.shape), args, scale, zero))
        stats.append(row)
    return stats


def deploy_widths(choices: dict[str, tuple[int, str | None]]) -> dict[str, int]:
    """`deploy: compressed_tensors[:PRESET]` choices (module -> (its width in the plan, the preset or None)) as a
    plan: the preset's width, or the module's own where none is named (4 or 8 bits: the others have no scheme)."""
    from qlbench.errors import QlbenchError

    out = {n: PRESETS[p] if p else b for n, (b, p) in choices.items()}
    bad = sorted({b for b in out.values() if b not in PRESETS.values()})
    if bad:
        raise QlbenchError(f"deploy compressed_tensors: no scheme for {', '.join(map(str, bad))} bits (name a preset: "
                           f"{', '.join(PRESETS)})")
    return out


def deploy(model, choices: dict[str, tuple[int, str | None]], settings) -> list[dict]:
    """The `deploy: compressed_tensors[:PRESET]` format: the merged model's layers in the schemes a folder holds,
    each row's `type` its scheme (`w4a16`)."""
    return apply(model, deploy_widths(choices), settings)
