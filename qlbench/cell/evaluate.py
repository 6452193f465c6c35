"""Stages before and after training: the task's metrics on held-out data — eval loss, each switchable width and
random switching, peak memory, and greedy generations of the probe prompts."""

from __future__ import annotations

from dataclasses import dataclass

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized


@dataclass
class Evaluated:
    eval_loss: float
    peak_mem_mb: float  # of training and evaluation (generation left out)
    switch_columns: dict  # eval_loss_b<w> and eval_loss_random_switch when precision switches
    generations: list[dict]


def eval_loss_of(ctx: Context, model, blocks) -> float:
    return ctx.task.eval_loss(model, blocks, ctx.settings["batch_size"], ctx.device, ctx.autocast)


def before_training(ctx: Context, model, base: Base) -> float:
    """Eval loss of the quantized base: LoRA's B is still zero, so the adapters add nothing yet."""
    from qlbench.cell import measure

    measure.reset_peak(ctx.device)
    loss = eval_loss_of(ctx, model, base.data.eval)
    ctx.log.info(f"eval loss before training: {loss:.4f}")
    return loss


def after_training(ctx: Context, model, base: Base, quantized: Quantized, status: str) -> Evaluated:
    from qlbench.cell import measure

    switching = quantized.switching
    switch_columns = switching.evaluate(base.data.eval, ctx.settings["batch_size"],
                                        lambda blocks: eval_loss_of(ctx, model, blocks),
                                        ctx.cell.bits) if switching else {}
    final = eval_loss_of(ctx, model, base.data.eval)
    ctx.log.info(f"eval loss after training: {final:.4f} ({status})")
    peak_mem = measure.peak_mem_mb(ctx.device)  # before generation: the peak of training and evaluation
    generations = ctx.task.generations(model, base.tokenizer, base.data, ctx.device, ctx.autocast)
    ctx.log.info(f"generated {len(generations)} probe outputs")
    return Evaluated(eval_loss=final, peak_mem_mb=peak_mem, switch_columns=switch_columns, generations=generations)
