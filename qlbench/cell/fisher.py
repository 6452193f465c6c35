"""One-pass sensitivity estimates (HAWQ-style), to hold against the measured ranking.

Per module, two estimates of the loss a quantization error δ of its weights costs:
- `estimate` = ½·Σ_j F_jj·δ_j², F the empirical Fisher diagonal of the unquantized base: the mean over *examples*
  of the squared per-example gradient, E_i[g_ij²]. Per-example gradients by micro-batches of one example (a
  sequence, or one row of a task batch): exact, and they need nothing of a model's modules (no functorch hooks),
  at the cost of one backward pass per example — the probe runs once per reference cell. (Squaring the gradient of
  the batch-mean loss instead gives (E g)² + Var/B: on a toy model the order of two modules flipped and the scale
  was 10–23× low.)
- `hessian_estimate` = ½·(tr H/n)·‖δ‖² (HAWQ-V2), tr H the trace of the loss Hessian over the module's n weights
  by Hutchinson's estimator: the mean of vᵀHv over `hutchinson_samples` Rademacher vectors v (Hv by a second
  backward pass through the gradient), one probe batch each.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import quantize_module
from qlbench.tasks import causal_lm

PROBE_STEP0 = 10**9  # batch indices far from the training steps, so the probe sees batches of its own
HUTCHINSON_SAMPLES = 16


def _size(x) -> int:
    return x.shape[0] if isinstance(x, torch.Tensor) else len(next(iter(x.values())))


def empirical_fisher(model, weights: list[torch.Tensor], sample, batches: int, device,
                     loss_fn=causal_lm.loss) -> tuple[list[torch.Tensor], int]:
    """The Fisher diagonal E_i[g_i²] over every example of `batches` probe batches, and the number of examples."""
    fisher = [torch.zeros_like(w) for w in weights]
    count = 0
    for b in range(batches):
        x = sample(PROBE_STEP0 + b).to(device)
        for i in range(_size(x)):
            loss = loss_fn(model, x[i : i + 1])
            for f, g in zip(fisher, torch.autograd.grad(loss, weights)):
                f += g.detach().double().pow(2).to(f.dtype)
            count += 1
    return [f / max(count, 1) for f in fisher], count


def hessian_traces(model, weights: list[torch.Tensor], sample, batches: int, device, loss_fn=causal_lm.loss,
                   samples: int = HUTCHINSON_SAMPLES, seed: int = 0) -> list[float]:
    """Hutchinson's estimate of tr(H) per weight tensor: mean over `samples` Rademacher v of vᵀ·H·v, sample s on
    probe batch s mod `batches` (exact for a diagonal Hessian)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(seed)
    traces = [0.0] * len(weights)
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no second derivative
        for s in range(samples):
            _hutchinson_sample(model, weights, sample, batches, device, loss_fn, samples, gen, traces, s)
    return traces


def _hutchinson_sample(model, weights, sample, batches, device, loss_fn, samples, gen, traces, s) -> None:
    """Add one Rademacher sample's vᵀ·H·v / samples to each weight tensor's trace."""
    x = sample(PROBE_STEP0 + s % max(batches, 1)).to(device)
    grads = torch.autograd.grad(loss_fn(model, x), weights, create_graph=True)
    vs = [(torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w.device, w.dtype) for w in weights]
    live = [k for k, g in enumerate(grads) if g.requires_grad]  # a gradient constant in w: H = 0 there
    if not live:
        return
    hv = torch.autograd.grad([grads[k] for k in live], weights, grad_outputs=[vs[k] for k in live],
                             allow_unused=True)
    for k, (h, v) in enumerate(zip(hv, vs)):
        if h is not None:
            traces[k] += (h.detach() * v).sum().item() / samples


def estimate(model, modules: list[str], bits: int, quant, sample, batches: int, device,
             loss_fn=causal_lm.loss, hutchinson_samples: int = HUTCHINSON_SAMPLES) -> list[dict]:
    """`quant`: the format the modules would be quantized in (`qlbench.study.settings.Quant`)."""
    found = {name: model.get_submodule(name) for name in modules}
    weights = [m.weight for m in found.values()]
    for w in weights:
        w.requires_grad_(True)
    fisher, examples = empirical_fisher(model, weights, sample, batches, device, loss_fn)
    traces = hessian_traces(model, weights, sample, batches, device, loss_fn, hutchinson_samples)
    rows = []
    with torch.no_grad():
        for (name, module), w, f, tr in zip(found.items(), weights, fisher, traces):
            w.requires_grad_(False)
            delta = quantize_module(module, w, bits, quant) - w.detach()
            power = delta.pow(2).sum().item()
            rows.append({"module": name, "probe_bits": bits, "fisher_trace": f.sum().item(), "noise_power": power,
                         "estimate": 0.5 * (f * delta.pow(2)).sum().item(), "numel": w.numel(),
                         "fisher_examples": examples, "hessian_trace": tr,
                         "hessian_estimate": 0.5 * tr / w.numel() * power, "hutchinson_samples": hutchinson_samples})
    return rows
