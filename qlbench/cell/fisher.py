"""A one-pass sensitivity estimate (HAWQ-style), to hold against the measured ranking.

Per module: ½·Σ_j F_jj·δ_j², where F is the empirical Fisher diagonal of the unquantized base (the mean squared
gradient of the loss with respect to each weight, over a few batches) and δ the error of quantizing that weight
at the probe's bit width. One forward and backward per batch instead of one fine-tuning run per module.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import quantize_module
from qlbench.tasks import causal_lm

PROBE_STEP0 = 10**9  # batch indices far from the training steps, so the probe sees batches of its own


def estimate(model, modules: list[str], bits: int, quant, sample, batches: int, device,
             loss_fn=causal_lm.loss) -> list[dict]:
    """`quant`: the format the modules would be quantized in (`qlbench.study.settings.Quant`)."""
    found = {name: model.get_submodule(name) for name in modules}
    weights = [m.weight for m in found.values()]
    for w in weights:
        w.requires_grad_(True)
    fisher = [torch.zeros_like(w) for w in weights]
    for i in range(batches):
        x = sample(PROBE_STEP0 + i).to(device)
        loss = loss_fn(model, x)
        for f, g in zip(fisher, torch.autograd.grad(loss, weights)):
            f += g.detach().pow(2) / batches
    rows = []
    with torch.no_grad():
        for (name, module), w, f in zip(found.items(), weights, fisher):
            w.requires_grad_(False)
            delta = quantize_module(module, w, bits, quant) - w.detach()
            rows.append({"module": name, "probe_bits": bits, "fisher_trace": f.sum().item(),
                         "noise_power": delta.pow(2).sum().item(),
                         "estimate": 0.5 * (f * delta.pow(2)).sum().item(), "numel": w.numel()})
    return rows
