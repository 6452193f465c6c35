"""How far a quantized weight is from the original: MSE, relative error, SNR, and the uniform-noise model."""

from __future__ import annotations

import math

import torch


def error_stats(name: str, bits: int, w: torch.Tensor, wq: torch.Tensor) -> dict:
    """One row of per-module quantization error; `noise_var_uniform` is the model Δ²/12 with Δ = 2^(1-b)·max|w|."""
    w, wq = w.detach().float(), wq.detach().float()
    err = wq - w
    mse = err.pow(2).mean().item()
    power = w.pow(2).mean().item()
    delta = 2.0 ** (1 - bits) * w.abs().max().item()
    return {
        "module": name,
        "bits": bits,
        "numel": w.numel(),
        "quant_mse": mse,
        "quant_rel_err": math.sqrt(mse / power) if power > 0 else 0.0,
        "quant_snr_db": 10 * math.log10(power / mse) if mse > 0 else float("inf"),
        "noise_var_uniform": delta**2 / 12,
    }
