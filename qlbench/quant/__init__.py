"""Quantization backends, one file each: `fake` (simulated quantize-dequantize, any width), `bnb` (bitsandbytes),
`hqq` (the hqq package's HQQLinear), `torchao` (torchao's int8 and NF4 tensors) and `compressed_tensors`
(vLLM's W8A16 / W4A16, by compressed-tensors).

A backend file declares what it can do (`BACKEND = qlbench.registry.Backend(...)`: formats and widths, whether it
re-quantizes in place, its layout) and exposes `apply(model, plan, settings) -> list[dict]`: it quantizes, in
place, the modules the plan names at the widths it gives, and returns one statistics row per quantized module; and
`dequantized_weight(module)`: what a module it quantized computes with, (out, in), float (LoftQ's rounds read it).
Adding a backend is adding its file (`qlbench settings` then lists it, and the config accepts it).
"""

from __future__ import annotations

from qlbench.registry import backend_module as backend  # noqa: F401  (the one way a cell gets its backend)


def plan(all_modules: list[str], masked: list[str], bits: int, high_bits: int) -> dict[str, int]:
    """module -> bit width: the mask's modules at `bits`, the rest at `high_bits`; 16 means left alone."""
    chosen = set(masked)
    widths = {m: (bits if m in chosen else high_bits) for m in all_modules}
    return {m: b for m, b in widths.items() if b < 16}


def with_layer_bits(plan: dict[str, int], fixed: dict[str, int]) -> dict[str, int]:
    """The plan with some modules pinned to their own width (a per-layer bit map from the config); 16 leaves one alone."""
    merged = {**plan, **fixed}
    return {m: b for m, b in merged.items() if b < 16}
