"""Activation and KV-cache quantization (QaLoF): symmetric min-max per token, with straight-through gradients.

Forward hooks, not module surgery: `act_bits` quantizes the input of every quantized linear, `kv_bits` the keys
and values each attention layer computes (what a KV cache would hold). Install them after LoRA is attached, so
the adapter's path sees the same quantized activations as the base.

A hook reads its layer's width when it runs (`widths`: module -> bits now, which switchable precision changes):
a layer at full precision is left alone, and `follow` quantizes at the layer's own width (QaLoF's choice).
"""

from __future__ import annotations

import torch

from qlbench.study.masks import ARCHS


def per_token(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize each token's vector (the last dimension) to `bits` with its own absmax scale."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    q = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
    return x + (q - x).detach()  # straight-through: the backward pass sees the identity


def _find(model, name: str):
    """A module by its name in the bare model, whether or not peft has wrapped the model since."""
    for candidate in (name, f"base_model.model.{name}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise KeyError(name)


def _kv_modules(arch: str, n_layer: int) -> list[tuple[str, str]]:
    prefix = ARCHS[arch][0]
    if arch == "gpt2":  # one fused projection: its output is [q | k | v]
        return [(prefix.format(i=i) + "attn.c_attn", "qkv") for i in range(n_layer)]
    return [(prefix.format(i=i) + f"self_attn.{p}_proj", "whole") for i in range(n_layer) for p in ("k", "v")]


def bits_now(setting, name: str, widths: dict) -> int:
    """The width a hook quantizes at now: 16 (none) while its layer is at full precision; else the setting, or the
    layer's own width for `follow`."""
    width = widths.get(name, 16)
    if width >= 16:
        return 16
    return width if setting == "follow" else setting


def apply(model, modules: list[str], act_bits, kv_bits, arch: str, n_layer: int, widths: dict) -> list:
    """Install the hooks on `modules` (and the attention layers' K/V projections); returns their handles (call
    .remove() on each to undo). `widths` is read at every forward pass."""
    handles = []
    if act_bits != 16:
        for name in modules:
            handles.append(_find(model, name).register_forward_pre_hook(_act_hook(name, act_bits, widths)))
    if kv_bits != 16:
        for name, layout in _kv_modules(arch, n_layer):
            handles.append(_find(model, name).register_forward_hook(_kv_hook(name, layout, kv_bits, widths)))
    return handles


def _act_hook(name: str, setting, widths: dict):
    def hook(module, args):
        bits = bits_now(setting, name, widths)
        return args if bits >= 16 else (per_token(args[0], bits), *args[1:])

    return hook


def _kv_hook(name: str, layout: str, setting, widths: dict):
    def hook(module, args, output):
        bits = bits_now(setting, name, widths)
        if bits >= 16:
            return output
        if layout == "whole":
            return per_token(output, bits)
        q, k, v = output.chunk(3, dim=-1)
        return torch.cat([q, per_token(k, bits), per_token(v, bits)], dim=-1)

    return hook
