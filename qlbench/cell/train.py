"""Stage 5: train the adapters with the loop (`qlbench.cell.loop`): resumable from the cell's checkpoint, stopped
by a signal or the SLURM time limit, precision switched before each step when the study switches it (or, under
`switch_schedule: sequential`, each width trained in turn: `qlbench.cell.sequential`), gradient variance probed at
a few steps."""

from __future__ import annotations

from dataclasses import dataclass

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized


@dataclass
class Trained:
    curve: list[dict]  # one dict per step: loss, lr, grad_norm, step_time_s, grad_var
    status: str  # ok | diverged
    resumed_from: int  # the step a checkpoint resumed at (0: none)
    grad_var: dict  # the row's grad_var* columns


def train(ctx: Context, model, base: Base, quantized: Quantized) -> Trained:
    from qlbench.cell import gradstats
    from qlbench.cell.loop import LoopSettings, train as loop
    t, precision = ctx.settings.train, quantized.precision
    switches = precision is not None and ctx.base_bits < 16 and ctx.settings.precision.trains_switching
    settings = LoopSettings(steps=t.steps, lr=t.lr, warmup=t.warmup, weight_decay=t.weight_decay,
                            grad_clip=t.grad_clip, checkpoint_every=t.checkpoint_every,
                            autocast_dtype=ctx.autocast, optimizer=t.optimizer,
                            compile=ctx.settings.runtime.compile)
    if settings.compile != "off":
        share_compiled(ctx)
    probes = gradstats.probe_steps(t.steps, ctx.settings.eval.grad_var_points)
    step_loss = training_loss(ctx)
    grad_var = gradstats.GradVariance(model, base.sample, probes, ctx.device, ctx.autocast, step_loss)
    checkpoint = current_checkpoint(ctx)
    if switches and ctx.settings.precision.switch_bits and ctx.settings.precision.switch_schedule == "sequential":
        from qlbench.cell import sequential

        result = sequential.train(model, precision, ctx.task, base.sample, ctx.settings, settings, device=ctx.device,
                                  checkpoint=checkpoint, stop_requested=ctx.stop,
                                  on_step=ctx.hooks.on_step(grad_var, ctx.out), log=ctx.log.info,
                                  progress=ctx.hooks.progress(ctx.out))
        precision.set({n: quantized.plan.get(n, 16) for n in precision.weights})  # the cell's own widths
        grad_var.merge_into(result.curve)
        return Trained(curve=result.curve, status=result.status, resumed_from=result.resumed_from,
                       grad_var=grad_var.row_columns())
    result = loop(model, base.sample, settings, device=ctx.device, loss=step_loss,
                  checkpoint=checkpoint, stop_requested=ctx.stop,
                  on_step=ctx.hooks.on_step(grad_var, ctx.out),
                  before_step=precision.before_step if switches else None, log=ctx.log.info,
                  progress=ctx.hooks.progress(ctx.out))
    grad_var.merge_into(result.curve)
    return Trained(curve=result.curve, status=result.status, resumed_from=result.resumed_from,
                   grad_var=grad_var.row_columns())


def training_loss(ctx: Context):
    """The task's loss, or under `loss_kernel: chunked` (a causal LM's) the same loss without all its logits at
    once (`qlbench.tasks.chunked_loss`)."""
    if ctx.settings.runtime.loss_kernel == "chunked":
        from qlbench.tasks import chunked_loss

        ctx.log.info(f"loss: chunked, {chunked_loss.CHUNK_LOGITS:,} logits a chunk")
        return chunked_loss.loss
    return ctx.task.loss


def share_compiled(ctx: Context) -> None:
    """Inductor's caches in the study's resources, not each node's /tmp: a study's cells of one shape (every bit
    width, seed and mask of a rank) compile once per machine or cluster, and load the kernels after that. The
    user's own TORCHINDUCTOR_CACHE_DIR wins."""
    import os
    from pathlib import Path

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(ctx.study.resources).resolve() / "compiled"))


def current_checkpoint(ctx: Context):
    """The cell's checkpoint path, after removing a checkpoint made under other settings (its stamp, the config
    hash beside it, differs): resuming that would mix two settings in one run."""
    from qlbench.study.grid import CHECKPOINT, CHECKPOINT_STAMP

    checkpoint, stamp = ctx.out / CHECKPOINT, ctx.out / CHECKPOINT_STAMP
    stale = not stamp.exists() or stamp.read_text().strip() != ctx.config_hash
    if checkpoint.exists() and stale:
        ctx.log.info("a checkpoint made under other settings: starting over")
        checkpoint.unlink()
    if stale:  # sequential switchable training's checkpoints, one per width
        for path in ctx.out.glob(checkpoint.name + ".b*"):
            path.unlink()
    stamp.write_text(ctx.config_hash + "\n")
    return checkpoint
