"""LoftQ initialisation (Li et al. 2023) with the cell's own quantizer, whatever its backend.

LoftQ starts the adapter where quantization hurt: for each quantized module LoRA adapts, it alternates
Q_t = quant(W − L_{t−1}·R_{t−1}) (L_0·R_0 = 0) and (L_t, R_t) = the top-r SVD of W − Q_t, T rounds (`loftq_iter`).
The base then holds Q_T — what the backend stores for W − L_{T−1}·R_{T−1} — and the adapter starts at s·B·A = L_T·R_T
(B = L/√s, A = R/√s, s = alpha / r), so the initial model is W ≈ Q_T + s·B·A instead of Q(W).

What differs from peft's own `LoftQConfig`: peft quantizes with its own NF4 (or uniform) code whatever the cell's
format and ignores LoRA's scaling (it sets B = L, A = R, so with alpha ≠ r its start overshoots); here the quantizer
is the cell's backend (fake int/nf/fp, bnb, hqq, torchao: each backend's `apply` on a copy of the module, read back
with its `dequantized_weight`), and B·A is divided by the scaling.
"""

from __future__ import annotations

import copy

import torch

from qlbench.quant.formats import out_in


def adapted(plan: dict[str, int], targets: list[str]) -> list[str]:
    """The planned modules LoRA wraps (peft's rule: the name is a target or ends with `.target`)."""
    return [n for n in plan if any(n == t or n.endswith("." + t) for t in targets)]


def low_rank(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L·R the best rank-`rank` approximation of `residual` (out, in): √S split evenly, as peft's."""
    u, s, vh = torch.linalg.svd(residual.float(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    lo, ro = u[:, :r] * root, root[:, None] * vh[:r]
    if r < rank:  # a rank above the matrix's: the extra directions start at zero
        lo = torch.nn.functional.pad(lo, (0, rank - r))
        ro = torch.nn.functional.pad(ro, (0, 0, 0, rank - r))
    return lo, ro


def image(module, weight: torch.Tensor, bits: int, settings, backend) -> torch.Tensor:
    """What the backend makes of `weight` ((out, in)) in a copy of this module at `bits`, as an (out, in) float
    tensor."""
    holder = torch.nn.Module()
    holder.add_module("m", copy.deepcopy(module))
    holder.m.weight.data.copy_(out_in(holder.m, weight).to(holder.m.weight.dtype))
    backend.apply(holder, {"m": bits}, settings)
    return backend.dequantized_weight(holder.m).float()


@torch.no_grad()
def prepare(model, plan: dict[str, int], names: list[str], rank: int, iters: int, settings, backend) -> dict:
    """Before the backend quantizes the model: the first T−1 rounds on copies, and each module's weight set to the
    target of the last round, W − L_{T−1}·R_{T−1} (W itself when T = 1). Returns, per module, its full-precision
    weight (out, in) and the error of quantizing it plainly, ‖W − Q(W)‖_F (None: read from the final quantization)."""
    if not hasattr(backend, "dequantized_weight"):
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"lora_init loftq: backend {backend.__name__} has no dequantized_weight(module)")
    kept = {}
    for name in names:
        module = model.get_submodule(name)
        w = out_in(module, module.weight.detach()).float().clone()
        target, plain = w, None
        for _ in range(iters - 1):
            q = image(module, target, plan[name], settings, backend)
            plain = plain if plain is not None else (w - q).norm().item()
            lo, ro = low_rank(w - q, rank)
            target = w - lo @ ro
        module.weight.data.copy_(out_in(module, target).to(module.weight.dtype))
        kept[name] = {"weight": w, "plain_error": plain}
    return kept


@torch.no_grad()
def finish(model, kept: dict, rank: int, backend) -> dict:
    """After the backend quantized the model: the last round's SVD of W − Q_T. Returns, per module, its factors (L, R),
    Q_T, ‖W − Q_T − L·R‖_F (the initial error) and ‖W − Q(W)‖_F (the default init's)."""
    out = {}
    for name, k in kept.items():
        w = k["weight"]
        q = backend.dequantized_weight(model.get_submodule(name)).float().to(w.device)
        lo, ro = low_rank(w - q, rank)
        plain = k["plain_error"] if k["plain_error"] is not None else (w - q).norm().item()
        out[name] = {"L": lo, "R": ro, "Q": q, "init_error": (w - q - lo @ ro).norm().item(), "plain_error": plain}
    return out


@torch.no_grad()
def set_adapter(module, lo: torch.Tensor, ro: torch.Tensor, adapter: str = "default") -> None:
    """A peft LoRA layer's A and B so that scaling·B·A = L·R."""
    k = module.scaling[adapter] ** -0.5
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    a.copy_((ro * k).to(a.dtype))
    b.copy_((lo * k).to(b.dtype))
