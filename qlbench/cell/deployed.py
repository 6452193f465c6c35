"""After training, the cell as users deploy it: the adapter merged into the 16-bit base (W + s·B·A, the base loaded
again from disk: the cell's own base is quantized), evaluated; then that merged model quantized again with the
cell's plan and backend, evaluated — beside the unmerged QLoRA number (`eval_loss`), so a study shows what
merging costs.

Columns: `merged_eval_loss` and `merged_requant_eval_loss`, and the task's metrics the same way
(`merged_eval_<metric>`, `merged_requant_eval_<metric>`: a classifier's accuracy, extractive QA's EM/F1; causal LM
has none beyond the loss — its EM/F1 come from greedy generation, not repeated here). One pass of `scores` each.
NaN where nothing is quantized in the base (a 16-bit or `none` cell, or `bits_target: adapter`), and where a
deployed model would differ from this one in more than its weights: widths that change after quantization
(switchable, CPT) and quantized activations or KV cache (`act_bits`, `kv_bits`)."""

from __future__ import annotations

import time

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized

LOSSES = ("merged_eval_loss", "merged_requant_eval_loss")


def skipped(ctx: Context, quantized: Quantized) -> str | None:
    """Why this cell gets no merged numbers (None: it does)."""
    q = ctx.settings.quant
    if not quantized.plan:
        return "nothing in the base is quantized"
    if quantized.precision is not None:
        return "its widths change after quantization"
    if q.act_bits != 16 or q.kv_bits != 16:
        return "it quantizes activations or the KV cache"
    return None


def merge_into(merged, model) -> int:
    """Add each adapter's s·B·A (as the cell computed with it: quantized adapters rounded) to the plain base
    `merged`'s weight, and copy a trained head; returns how many weights were merged."""
    import torch

    from qlbench.cell import lora
    from qlbench.quant.formats import out_in

    state = lora.adapter_state(model)
    prefix = "base_model.model."
    count = 0
    with torch.no_grad():
        for key, a in state.items():
            if not key.endswith(".lora_A.weight"):
                if "lora_" not in key:  # a task's trained head
                    head = key.removeprefix(prefix).replace(".modules_to_save.default", "")
                    merged.get_parameter(head).copy_(a)
                continue
            name = key.removesuffix(".lora_A.weight").removeprefix(prefix)
            b = state[key.replace(".lora_A.", ".lora_B.")]
            scaling = model.get_submodule(prefix + name).scaling["default"]
            target = merged.get_submodule(name)
            delta = scaling * (b.float() @ a.float())  # (out, in)
            target.weight.add_(out_in(target, delta.to(target.weight.device)).to(target.weight.dtype))
            count += 1
    return count


def evaluate(ctx: Context, model, base: Base, quantized: Quantized) -> dict:
    import torch

    from qlbench import quant
    from qlbench.cell.evaluate import scores
    from qlbench.cell.load import base_dtype, head_kwargs
    from qlbench.data import models

    why = skipped(ctx, quantized)
    if why:
        ctx.log.info(f"no merged (as deployed) numbers: {why}")
        return {k: float("nan") for k in LOSSES}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # a new head's init draws from the global seed: leave it as it was
        torch.manual_seed(ctx.cell.seed)
        merged, _ = models.load(ctx.spec, ctx.cell.model, ctx.study.resources,
                                dtype=base_dtype(ctx.settings.runtime.base_dtype, ctx.device), head=ctx.task.HEAD,
                                head_kwargs=head_kwargs(ctx))
    merged.to(ctx.device)
    merged.requires_grad_(False)
    n = merge_into(merged, model)
    columns = {f"merged_eval_{k}": v for k, v in scores(ctx, merged, base).items()}
    quant.backend(ctx.settings.quant.backend).apply(merged, quantized.plan, ctx.settings)
    columns.update({f"merged_requant_eval_{k}": v for k, v in scores(ctx, merged, base).items()})
    del merged
    columns["merged_s"] = time.perf_counter() - t0
    ctx.log.info(f"as deployed ({n} adapters merged): eval loss {columns['merged_eval_loss']:.4f} merged at 16 bits, "
                 f"{columns['merged_requant_eval_loss']:.4f} merged and quantized again "
                 f"({columns['merged_s']:.1f}s)")
    return columns
