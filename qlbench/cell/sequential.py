"""QaLoF's switchable training (`switch_schedule: sequential`): each width's adapter is trained in turn for the full
`steps`, the highest width first; every lower width adds cascade distillation from the next higher width's model.

The loss of a lower width w under teacher width h (the next higher of `switch_bits`):

    alpha * KL(teacher_T || student_T) * T**2 + (1 - alpha) * task loss

where x_T = softmax(logits / T). The direction is Hinton's knowledge distillation, as torch writes it:
`kl_div(log_softmax(student / T), softmax(teacher / T))`, i.e. sum_c p_teacher (log p_teacher - log p_student),
averaged over the rows of the logits (every token for a causal LM, every example for a classifier, the start and
end distributions over positions for extractive QA, those two averaged as the span loss is). The teacher is the
same base at width h with h's trained adapter, run in eval mode without gradients, before the student's forward
pass on the same batch.

Choices QaLoF's document leaves unstated, made here: each width starts a fresh optimizer (AdamW state) and the
full learning-rate schedule (warm-up, cosine) over its `steps`; every width sees the same batches (step 0..steps-1
of the cell's sampler); a trained head (the span or class head) trains with the highest width only and is frozen
after, so each higher width's model is left exactly as it was trained; the gradient-variance probe reads the
first (highest) width's steps. The training curve runs width after width (steps·k entries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from qlbench.cell.precision import Precision, adapter_name
from qlbench.data import safe_load


def distillation(student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T)·T², averaged over each logit tensor's rows (all dims but the last), then over the
    tensors (QA: start and end)."""
    t = temperature
    terms = []
    for s, q in zip(student, teacher, strict=True):
        s, q = s.float().reshape(-1, s.shape[-1]), q.float().reshape(-1, q.shape[-1])
        log_student = torch.nn.functional.log_softmax(s / t, dim=-1)
        terms.append(torch.nn.functional.kl_div(log_student, torch.softmax(q / t, dim=-1), reduction="batchmean"))
    return sum(terms) / len(terms) * t * t


def cascade_loss(task, precision: Precision, student: int, teacher: int | None, alpha: float,
                 temperature: float) -> Callable:
    """The training loss of width `student`: the task's loss alone for the highest width (`teacher` None), else
    the cascade: the teacher's logits at width `teacher` (no grad, eval mode), then the student's."""

    def loss(model, batch):
        if teacher is None:
            precision.set(precision.uniform(student))
            return task.loss(model, batch)
        precision.set(precision.uniform(teacher))
        model.eval()
        with torch.no_grad():
            _, soft = task.loss_and_logits(model, batch)
        model.train()
        precision.set(precision.uniform(student))
        task_loss, logits = task.loss_and_logits(model, batch)
        return alpha * distillation(logits, soft, temperature) + (1 - alpha) * task_loss

    return loss


def phase_files(checkpoint: Path, width: int) -> tuple[Path, Path]:
    """A width's resumable checkpoint and the file that marks it trained (its adapter and curve)."""
    return checkpoint.with_name(f"{checkpoint.name}.b{width}"), checkpoint.with_name(f"{checkpoint.name}.b{width}.done")


def train(model, precision: Precision, task, sample, settings, loop_settings, *, device, checkpoint: Path | None,
          stop_requested, on_step, log, progress, on_width: Callable[[int], None] | None = None):
    """Train every width of `settings.precision.switch_bits` in turn, highest first; returns the loop's
    TrainResult over all widths (curve steps numbered across them). `on_width(w)`: called as width w starts."""
    from qlbench.cell import loop

    p = settings.precision
    widths = sorted(p.switch_bits, reverse=True)
    shared = [q for n, q in model.named_parameters() if q.requires_grad and "lora_" not in n]  # a trained head
    was_trainable = {id(q): q.requires_grad for q in model.parameters()}
    result = loop.TrainResult()
    try:
        for i, width in enumerate(widths):
            if on_width is not None:
                on_width(width)
            precision.only = adapter_name(width, list(precision.adapter_widths))
            precision.set(precision.uniform(width))  # only this width's adapter trains
            for q in shared:
                q.requires_grad_(i == 0)
            step_ckpt, done = phase_files(checkpoint, width) if checkpoint is not None else (None, None)
            if done is not None and done.exists():
                phase = _load_done(done, model)
                log(f"width {width}: trained before ({len(phase.curve)} steps)")
            else:
                log(f"width {width}: {loop_settings.steps} steps"
                    + (f", distilled from width {widths[i - 1]}" if i else ""))
                phase = loop.train(
                    model, sample, loop_settings, device=device,
                    loss=cascade_loss(task, precision, width, widths[i - 1] if i else None, p.distill_alpha,
                                      p.distill_temperature),
                    checkpoint=step_ckpt, stop_requested=stop_requested, on_step=on_step if i == 0 else None,
                    log=log, progress=(lambda d, n, i=i: progress(i * n + d, len(widths) * n)) if progress else None)
                if done is not None and phase.status == "ok":
                    _save_done(done, model, phase)
            offset = i * loop_settings.steps
            result.curve += [{**r, "step": r["step"] + offset, "width": width} for r in phase.curve]
            result.resumed_from = result.resumed_from or (offset + phase.resumed_from if phase.resumed_from else 0)
            if phase.status != "ok":
                result.status = phase.status
                break
    finally:
        precision.only = None
        for q in model.parameters():
            q.requires_grad_(was_trainable[id(q)])
        precision.set(precision.uniform(widths[-1]))
    return result


def _save_done(path: Path, model, phase) -> None:
    state = {"params": {n: q.detach().cpu() for n, q in model.named_parameters() if q.requires_grad},
             "curve": phase.curve}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_done(path: Path, model):
    from qlbench.cell.loop import TrainResult

    state = safe_load.load(path, "checkpoint", map_location="cpu")  # tensors and the curve: data only
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state["params"].items():
            params[n].copy_(t)
    return TrainResult(curve=state["curve"], resumed_from=len(state["curve"]))
