"""Stages before and after training: the task's scores on held-out data — the eval loss and the task's metrics
(EM/F1, accuracy) at the cell's own widths; for a cell whose widths may change, the same scores at each width,
per-layer map, layer-wise scan unit and under random precision inference, without retraining; peak memory; and
the task's per-example outputs (greedy generations, predicted spans)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized


@dataclass
class Evaluated:
    eval_loss: float
    peak_mem_mb: float  # of training and evaluation (generation left out)
    columns: dict  # eval_<metric> at the cell's widths; eval_<score>_<config> at other widths (see `at_other_widths`)
    generations: list[dict]


def eval_loss_of(ctx: Context, model, blocks) -> float:
    return ctx.task.eval_loss(model, blocks, ctx.settings.train.batch_size, ctx.device, ctx.autocast)


def scores(ctx: Context, model, base: Base) -> dict:
    """The eval loss and the task's metrics under the widths in force now."""
    batch_size = ctx.settings.train.batch_size
    metrics = ctx.task.metrics(model, base.tokenizer, base.data, ctx.device, ctx.autocast, batch_size)
    loss = metrics.pop("loss") if "loss" in metrics else eval_loss_of(ctx, model, base.data.eval)
    return {"loss": loss, **metrics}


def before_training(ctx: Context, model, base: Base) -> float:
    """Eval loss of the quantized base: LoRA's B is still zero, so the adapters add nothing yet."""
    from qlbench.cell import measure

    measure.reset_peak(ctx.device)
    loss = eval_loss_of(ctx, model, base.data.eval)
    ctx.log.info(f"eval loss before training: {loss:.4f}")
    return loss


def after_training(ctx: Context, model, base: Base, quantized: Quantized, status: str) -> Evaluated:
    from qlbench.cell import measure

    columns = at_other_widths(ctx, quantized, lambda: scores(ctx, model, base)) if quantized.precision else {}
    final = eval_loss_of(ctx, model, base.data.eval)
    peak_mem = measure.peak_mem_mb(ctx.device)  # before generation: the peak of training and evaluation
    generations = ctx.task.outputs(model, base.tokenizer, base.data, ctx.device, ctx.autocast)
    own = ctx.task.summary(generations)  # the task's metrics at the cell's own widths, from the same passes
    if set(ctx.task.TASK.metrics) - set(own):  # declared metrics the generations do not give (sft's answer loss)
        more = ctx.task.metrics(model, base.tokenizer, base.data, ctx.device, ctx.autocast, ctx.settings.train.batch_size)
        own.update({k: v for k, v in more.items() if k not in own and k != "loss"})
    ctx.log.info(f"eval loss after training: {final:.4f} ({status})"
                 + "".join(f", {k} {v:.2f}" for k, v in own.items()) + f"; {len(generations)} outputs")
    return Evaluated(eval_loss=final, peak_mem_mb=peak_mem, generations=generations,
                     columns={**{f"eval_{k}": v for k, v in own.items()}, **columns})


def at_other_widths(ctx: Context, quantized: Quantized, score) -> dict:
    """`eval_<score>_<config>` for each config: `b<w>` (the masked layers at w), `random_switch` (a width drawn
    per forward pass), each named map of `eval_maps` (its layers at their widths, every other at `high_bits`, as
    QaLoF's hybrid: listed layers at 4, the rest at 8), and `scan_<unit>` (all at the scan's `rest`, one block or
    module at its `bits`; `scan_base`: none at `bits`); then the cell's own widths are restored."""
    from qlbench.study import masks

    precision, p, lay = quantized.precision, ctx.settings.precision, ctx.layout
    own = {n: quantized.plan.get(n, 16) for n in precision.weights}
    columns: dict = {}

    def take(label: str, widths: dict) -> None:
        precision.set({**own, **widths})
        columns.update({f"eval_{k}_{label}": v for k, v in score().items()})

    widths = p.eval_widths
    for width in widths:
        take(f"b{width}", precision.uniform(width))
    if len(widths) > 1:  # random precision inference: a width per forward pass
        precision.set(own)
        handle, drawn = precision.random_inference(widths, ctx.cell.seed)
        try:
            columns.update({f"eval_{k}_random_switch": v for k, v in score().items()})
        finally:
            handle.remove()
        columns["random_switch_passes"] = len(drawn)
    high = {n: ctx.settings.quant.high_bits for n in precision.weights}  # a map names its low layers; the rest: high
    for label, mapping in p.eval_maps.items():
        take(label, {**high, **{m: b for mask, b in mapping.items() for m in masks.resolve(mask, lay)}})
    if p.eval_scan:
        t0 = time.perf_counter()
        scan = p.eval_scan
        rest = {n: scan.rest for n in lay.all_names()}
        take("scan_base", rest)
        for unit in masks.expand({"each": scan.each}, lay):
            take(f"scan_{unit}", {**rest, **{m: scan.bits for m in masks.resolve(unit, lay)}})
        columns["scan_s"] = time.perf_counter() - t0
    precision.set(own)
    ctx.log.info(f"evaluated at {len(columns)} other widths' scores without retraining")
    return columns
