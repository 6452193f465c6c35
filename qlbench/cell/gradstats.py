"""Gradient variance across micro-batches (σ_g² of the bounds study), probed at a few steps of training.

At a probe step the training batch is split into micro-batches of one sequence each; the LoRA gradient of each
is computed on its own, and σ_g² is their variance: the trace of the covariance, E‖g_i − ḡ‖² with the unbiased
1/(k−1), summed over every trainable coordinate (`grad_var`), and the same divided by the number of coordinates
(`grad_var_per_param`: the bound's σ_g² is per coordinate; the sum over A and B grows with their count r·(m+n)),
and per LoRA module (`grad_var_per_module`, JSON: module -> per-coordinate variance over its A and B). The probe runs in `train`'s `on_step` hook, after backward and clip and before the
optimizer step; it saves and restores the gradients and the RNG state, so training takes the same path whether
it probes or not. Its points go into the loop's checkpoints (`state_dict`), so a resumed cell keeps them.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import torch

from qlbench.tasks import causal_lm


def probe_steps(steps: int, points: int) -> list[int]:
    """`points` steps spread evenly over [0, steps − 1], first and last included."""
    if points <= 0 or steps <= 0:
        return []
    if points == 1:
        return [0]
    return sorted({round(i * (steps - 1) / (points - 1)) for i in range(points)})


def micro_batch_variance(grads: list[list[torch.Tensor]]) -> tuple[float, float]:
    """Per-micro-batch gradients (each a list of tensors) -> (trace of their covariance, per coordinate)."""
    k = len(grads)
    if k < 2:
        return float("nan"), float("nan")
    total, numel = 0.0, 0
    for parts in zip(*grads):
        g = torch.stack([p.double() for p in parts])  # [k, ...]
        total += ((g - g.mean(dim=0)) ** 2).sum().item() / (k - 1)
        numel += parts[0].numel()
    return total, total / numel


def module_of(name: str) -> str:
    """The LoRA module a trainable parameter belongs to: its name up to `.lora_` (the whole name otherwise)."""
    return name.split(".lora_")[0]


def per_module_variance(grads: list[list[torch.Tensor]], names: list[str]) -> dict[str, float]:
    """Per module: the per-coordinate micro-batch variance over the parameters whose names map to it."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(module_of(n), []).append(i)
    return {m: micro_batch_variance([[g[i] for i in idx] for g in grads])[1] for m, idx in groups.items()}


class GradVariance:
    """The `on_step` probe. `points` holds one dict per probe step: step, grad_var, grad_var_per_param, probe_s."""

    def __init__(self, model, sample: Callable[[int], torch.Tensor], steps: list[int], device: torch.device,
                 autocast_dtype=None, loss: Callable = causal_lm.loss):
        self.model, self.sample, self.steps, self.loss = model, sample, set(steps), loss
        self.device, self.autocast_dtype = device, autocast_dtype
        self.points: list[dict] = []

    def __call__(self, step: int) -> None:
        if step not in self.steps:
            return
        t0 = time.perf_counter()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        batch = self.sample(step)
        grads = []
        for i in range(batch.shape[0]):
            for p in params:
                p.grad = None
            x = batch[i : i + 1].to(self.device)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                loss = self.loss(self.model, x)
            loss.backward()
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().float().cpu() for p in params])
        for p, g in zip(params, saved):
            p.grad = g
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        total, per_param = micro_batch_variance(grads)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.points.append({"step": step, "grad_var": total, "grad_var_per_param": per_param,
                            "per_module": per_module_variance(grads, names), "probe_s": time.perf_counter() - t0})

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the probe: the points taken so far (a resumed run must not lose them)."""
        return {"points": [dict(p) for p in self.points]}

    def load_state_dict(self, state: dict) -> None:
        self.points = [dict(p) for p in state["points"]]

    def merge_into(self, curve: list[dict]) -> None:
        """Put each point's `grad_var` on its curve row, and take the probe's time out of that step's time."""
        by_step = {p["step"]: p for p in self.points}
        for row in curve:
            point = by_step.get(row["step"])
            row.setdefault("grad_var", float("nan"))
            if point is not None:
                row["grad_var"] = point["grad_var"]
                row["step_time_s"] = max(0.0, row["step_time_s"] - point["probe_s"])

    def row_columns(self) -> dict:
        """The row's `grad_var*` columns: first, last and mean over the probe points (NaN when none ran)."""
        values = [p["grad_var"] for p in sorted(self.points, key=lambda p: p["step"])]
        per_param = [p["grad_var_per_param"] for p in self.points]
        modules: dict[str, list[float]] = {}
        for p in self.points:
            for m, v in p.get("per_module", {}).items():
                modules.setdefault(m, []).append(v)
        nan = float("nan")
        return {
            "grad_var_n": len(values),
            "grad_var_first": values[0] if values else nan,
            "grad_var_last": values[-1] if values else nan,
            "grad_var_mean": sum(values) / len(values) if values else nan,
            "grad_var_per_param_mean": sum(per_param) / len(per_param) if per_param else nan,
            "grad_var_per_module": json.dumps({m: sum(v) / len(v) for m, v in sorted(modules.items())}),
        }
