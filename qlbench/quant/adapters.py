"""Quantized LoRA adapters: the bounds study's noise model, independently of the base's bits.

With `adapter_bits` b < 16, every forward uses A and B rounded to b bits — symmetric min-max over the whole matrix,
step Δ = R / (2^(b-1) - 1) with R = max|w| (the noise model's uniform rounding, variance ≈ Δ²/12) — while the
optimizer updates the float latents: the rounding's gradient is passed straight through. The rounding is
idempotent, so the saved adapter (the rounded values) computes exactly what the cell evaluated.
"""

from __future__ import annotations

import torch

ATTR = "qlbench_adapter_bits"


def round_to_bits(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-matrix min-max rounding to 2^bits - 1 levels (zero stays exactly zero)."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().max().clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def straight_through(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Forward: the rounded matrix. Backward: the identity."""
    return w + (round_to_bits(w, bits) - w).detach()


class _QuantizedForward:
    """Replaces one LoRA linear's forward: F.linear with the rounded weight (names and state dict unchanged)."""

    def __init__(self, linear: torch.nn.Linear, bits: int):
        self.linear, self.bits = linear, bits

    def __call__(self, x):
        return torch.nn.functional.linear(x, straight_through(self.linear.weight, self.bits), self.linear.bias)


def lora_linears(model):
    """(name, module) of every LoRA A and B linear in a peft model."""
    for name, module in model.named_modules():
        for which in ("lora_A", "lora_B"):
            container = getattr(module, which, None)
            if not isinstance(container, torch.nn.ModuleDict):
                continue
            for adapter, linear in container.items():
                if isinstance(linear, torch.nn.Linear):
                    yield f"{name}.{which}.{adapter}", linear


def apply(model, bits: int) -> int:
    """Make every LoRA A and B compute with `bits`-bit weights; 16 leaves them alone. Returns how many."""
    if bits >= 16:
        return 0
    count = 0
    for _, linear in lora_linears(model):
        linear.forward = _QuantizedForward(linear, bits)
        setattr(linear, ATTR, bits)
        count += 1
    return count


@torch.no_grad()
def effective_state(model, state: dict) -> dict:
    """peft's adapter state dict with each quantized A/B replaced by the rounded values it computes with."""
    for name, linear in lora_linears(model):
        bits = getattr(linear, ATTR, None)
        if bits is None:
            continue
        adapter = name.rsplit(".", 1)[1]
        key = _state_key(name, adapter, state)
        if key is not None:
            state[key] = round_to_bits(linear.weight.detach().float(), bits).to(state[key].dtype).cpu().contiguous()
    return state


def _state_key(module_name: str, adapter: str, state: dict) -> str | None:
    """peft drops the adapter name from its saved keys: `...lora_A.default` -> `...lora_A.weight`."""
    stem = module_name[: -len(adapter) - 1]
    for key in (f"{stem}.weight", f"{module_name}.weight"):
        if key in state:
            return key
    return None
