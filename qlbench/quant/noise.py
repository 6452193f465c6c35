"""The uniform noise model checked on qlbench's own quantizers: measured error variance against Δ²/12, where Δ
is the step each quantizer really uses (per matrix, per row or per block), not the bounds paper's 2^(1−b)·R.

A quantizer's error is uniform on [−Δ/2, Δ/2] only when Δ is small against the spread of the values; at 2–3
bits most values round to zero or to ±R and the model breaks. `check` shows where, and fails (ratio far from 1)
for a quantizer whose step is not the one it claims.
"""

from __future__ import annotations

import torch

from qlbench.quant.adapters import round_to_bits
from qlbench.quant.formats import nf_code, quantize_blockwise, quantize_int

HOLDS = (0.8, 1.25)  # measured / predicted within this band: the uniform model holds
NF_BLOCK = 64


def _int_step(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric int per row: Δ_row = max|w_row| / (2^(b−1) − 1), broadcast to every element."""
    rows = w.reshape(w.shape[0], -1)
    return (rows.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)).expand_as(rows)


def _adapter_step(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Adapter rounding, per matrix: Δ = max|w| / (2^(b−1) − 1)."""
    return torch.full_like(w, float(w.abs().max()) / (2 ** (bits - 1) - 1))


def _nf_step(w: torch.Tensor, bits: int) -> torch.Tensor:
    """NF-k per block of 64: the code's mean spacing, 2·absmax/(2^b − 1) (its levels are not evenly spaced,
    so this is the uniform model's best case, not the truth)."""
    flat = w.reshape(-1)
    pad = (-flat.numel()) % NF_BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, NF_BLOCK)
    step = (2 * blocks.abs().amax(dim=1, keepdim=True) / (2**bits - 1)).expand_as(blocks)
    return step.reshape(-1)[: flat.numel()].view_as(w)


# name -> (quantize-dequantize, its step per element)
QUANTIZERS = {
    "adapter": (round_to_bits, _adapter_step),
    "int": (lambda w, b: quantize_int(w, b, symmetric=True), _int_step),
    "nf": (lambda w, b: quantize_blockwise(w, nf_code(b), NF_BLOCK), _nf_step),
}


def check_one(w: torch.Tensor, bits: int, quantize, step) -> dict:
    """Measured E[(Q(w) − w)²] against the uniform model's E[Δ²]/12 with the quantizer's own step, and against
    the paper's Δ = 2^(1−b)·max|w| over the whole tensor."""
    w = w.detach().float()
    err = quantize(w, bits) - w
    measured = err.pow(2).mean().item()
    predicted = step(w, bits).pow(2).mean().item() / 12
    paper = (2.0 ** (1 - bits) * w.abs().max().item()) ** 2 / 12
    ratio = measured / predicted if predicted > 0 else float("nan")
    return {"bits": bits, "measured_var": measured, "predicted_var": predicted, "ratio": ratio,
            "paper_var": paper, "ratio_to_paper": measured / paper if paper > 0 else float("nan"),
            "holds": bool(HOLDS[0] <= ratio <= HOLDS[1])}


def check(tensors: dict[str, torch.Tensor], widths, quantizers: dict | None = None) -> list[dict]:
    """One row per (quantizer, tensor, bits)."""
    rows = []
    for qname, (quantize, step) in (quantizers or QUANTIZERS).items():
        for tname, w in tensors.items():
            for b in sorted(widths):
                rows.append({"quantizer": qname, "tensor": tname, "numel": w.numel(),
                             **check_one(w, b, quantize, step)})
    return rows


def adapter_tensors(cells_dir, limit: int = 4) -> dict[str, torch.Tensor]:
    """Trained LoRA A and B matrices of up to `limit` 16-bit cells under `cells_dir` (real tensors, unrounded),
    two dimensional and with at least 64 entries."""
    from pathlib import Path

    from safetensors.torch import load_file

    found = sorted(p for p in Path(cells_dir).rglob("adapter.safetensors") if "/b16/" in p.as_posix())[:limit]
    tensors = {}
    for path in found:
        cell = path.parent.relative_to(cells_dir).as_posix()
        for key, w in load_file(path).items():
            if w.dim() == 2 and w.numel() >= 64 and w.abs().max() > 0:
                tensors[f"{cell}:{key}"] = w.float()
    return tensors


def gaussian_tensors() -> dict[str, torch.Tensor]:
    """A stand-in when no trained adapter is at hand: one 256 × 256 standard normal matrix, seed 0."""
    return {"gaussian 256x256": torch.randn(256, 256, generator=torch.Generator().manual_seed(0))}
