"""The training loop: plain PyTorch, read top to bottom — batch, forward, backward, clip, step, log, checkpoint.

Used for both the base pretraining and the LoRA cells. Resumable: every `checkpoint_every` steps (and when the
process is told to stop) it saves the trainable weights, the optimizer, the RNG state, the curve so far and the
state of any step hook that keeps one (a probe with `state_dict`/`load_state_dict`, such as the gradient-variance
points); batches are a pure function of (seed, step), so a resumed run continues exactly where it left off.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from qlbench.data import safe_load
from qlbench.tasks import causal_lm

DIVERGED_FACTOR = 4.0  # a loss this many times the first step's loss counts as exploded


@dataclass
class LoopSettings:
    steps: int
    lr: float
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    final_lr: float = 0.1  # cosine decays to this fraction of lr
    checkpoint_every: int = 0
    autocast_dtype: torch.dtype | None = None
    optimizer: str = "adamw"  # adamw (torch) | paged_adamw | paged_adamw_8bit (bitsandbytes, as QLoRA)
    compile: str = "off"  # off, or a torch.compile mode for the step's forward and loss (settings.COMPILE_MODES)


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)
    status: str = "ok"  # ok | diverged
    resumed_from: int = 0


class Interrupted(Exception):
    """The process was asked to stop (SIGTERM, SIGUSR1); a checkpoint was saved first."""


def lr_at(step: int, s: LoopSettings) -> float:
    warm = max(1, int(s.warmup * s.steps))
    if step < warm:
        return s.lr * (step + 1) / warm
    progress = (step - warm) / max(1, s.steps - warm)
    return s.lr * (s.final_lr + (1 - s.final_lr) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(params, s: LoopSettings):
    if s.optimizer == "adamw":
        # foreach: one kernel per update for all the adapters' tensors. torch picks it only on a GPU; on a CPU it
        # loops over the tensors in Python (~10 ops each, ~2 ms a step for 56 LoRA tensors), to the same bits.
        return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, foreach=True)
    import bitsandbytes as bnb

    cls = {"paged_adamw": bnb.optim.PagedAdamW, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[s.optimizer]
    return cls(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)


def compiled(loss: Callable, mode: str) -> Callable:
    """The step's loss function (forward included) through torch.compile, or as it is (`off`). Compiled lazily, at
    the first step, which therefore carries the compilation (`measure.compile_s`); the backward is compiled with it.
    Inductor's on-disk caches (on by default) make a second cell of the same shape on the machine compile faster."""
    if mode in (None, "off"):
        return loss
    return torch.compile(loss, mode=None if mode == "default" else mode, dynamic=False)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def stateful(hook):
    """The object behind a step hook that keeps state across steps (`state_dict`/`load_state_dict`), looking
    through wrappers that name what they wrap in `__wrapped__` (as functools.wraps does); None if there is none."""
    while hook is not None:
        if hasattr(hook, "state_dict") and hasattr(hook, "load_state_dict"):
            return hook
        hook = getattr(hook, "__wrapped__", None)
    return None


def save_checkpoint(path: Path, model, opt, step: int, curve: list[dict], probes: dict | None = None) -> None:
    state = {
        "step": step,
        "params": {n: p.detach().cpu() for n, p in _trainable(model).items()},
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "curve": curve,
        "probes": probes or {},  # hook name -> its state_dict()
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:  # a full disk: no half-written checkpoint left beside the last good one
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, model, opt, probes: dict | None = None) -> tuple[int, list[dict]]:
    """Restore a checkpoint into the model and optimizer, and each hook in `probes` (name -> hook) its state.
    Read as data only (tensors, numbers, strings, lists, dicts: all `save_checkpoint` writes); a checkpoint that holds
    anything else is refused in one line (QlbenchError), unrun."""
    state = safe_load.load(path, "checkpoint", map_location="cpu")
    params = _trainable(model)
    with torch.no_grad():
        for n, t in state["params"].items():
            params[n].copy_(t)
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for name, hook in (probes or {}).items():
        if name in state.get("probes", {}):
            hook.load_state_dict(state["probes"][name])
    return state["step"], state["curve"]


def train(
    model,
    sample: Callable[[int], torch.Tensor],
    s: LoopSettings,
    *,
    device: torch.device,
    loss: Callable = causal_lm.loss,
    checkpoint: Path | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    on_step: Callable[[int], None] | None = None,
    before_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    params = list(_trainable(model).values())
    opt = make_optimizer(params, s)
    result = TrainResult()
    start = 0
    # hooks whose state must survive a resume (gradient-variance points taken before the checkpoint)
    probes = {name: h for name, h in (("on_step", stateful(on_step)), ("before_step", stateful(before_step)))
              if h is not None}
    if checkpoint is not None and checkpoint.exists():
        start, result.curve = load_checkpoint(checkpoint, model, opt, probes)
        result.resumed_from = start
        log(f"resumed from checkpoint at step {start}")
    model.train()
    step_loss = compiled(loss, s.compile)
    first_loss = result.curve[0]["loss"] if result.curve else None
    t_start = time.perf_counter()
    for step in range(start, s.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, s)
        for group in opt.param_groups:
            group["lr"] = lr
        if before_step is not None:
            before_step(step)  # e.g. switch the base's precision and its adapter
        x = sample(step).to(device)
        with torch.autocast(device.type, dtype=s.autocast_dtype, enabled=s.autocast_dtype is not None):
            batch_loss = step_loss(model, x)
        batch_loss.backward()
        clip = s.grad_clip if s.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)  # as the optimizer: same bits, fewer ops
        # one host-device sync per step, after backward: a read of the loss before backward idles the GPU
        loss_value, grad_norm = torch.stack([batch_loss.detach().float(), norm.float()]).tolist()
        first_loss = first_loss if first_loss is not None else loss_value
        if not math.isfinite(loss_value) or loss_value > DIVERGED_FACTOR * first_loss:  # no update from it
            opt.zero_grad(set_to_none=True)
            result.curve.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float("nan"),
                                 "step_time_s": time.perf_counter() - t0})
            result.status = "diverged"
            log(f"step {step}: loss {loss_value} diverged; stopping")
            break
        if on_step is not None:
            on_step(step)  # probes that need this step's gradients (gradient variance) run here
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result.curve.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                             "step_time_s": time.perf_counter() - t0})
        done = step + 1
        if progress is not None:
            progress(done, s.steps)  # `qlbench status` shows it: step of N (cluster/progress.py)
        if step % max(1, s.steps // 10) == 0 or done == s.steps:
            log(f"step {step:5d}  loss {loss_value:.4f}  lr {lr:.2e}  |g| {grad_norm:.3f}  "
                f"{time.perf_counter() - t_start:.1f}s")
        if checkpoint is not None and done < s.steps:
            if stop_requested():
                save_checkpoint(checkpoint, model, opt, done, result.curve, _states(probes))
                raise Interrupted(f"stopped at step {done}; checkpoint saved")
            if s.checkpoint_every and done % s.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, opt, done, result.curve, _states(probes))
    return result


def _states(probes: dict) -> dict:
    return {name: hook.state_dict() for name, hook in probes.items()}
