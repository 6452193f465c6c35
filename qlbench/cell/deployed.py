"""After training, the cell as users deploy it: the adapter merged into the 16-bit base (W + s·B·A, the base loaded
again from disk: the cell's own base is quantized), evaluated; then that merged model quantized again with the
cell's plan and backend, evaluated — beside the unmerged QLoRA number (`eval_loss`), so a study shows what
merging costs.

Columns: `merged_eval_loss` and `merged_requant_eval_loss`, and the task's metrics the same way
(`merged_eval_<metric>`, `merged_requant_eval_<metric>`: a classifier's accuracy, extractive QA's EM/F1; causal LM
has none beyond the loss — its EM/F1 come from greedy generation, not repeated here). One pass of `scores` each.
NaN where nothing is quantized in the base (a 16-bit or `none` cell, or `bits_target: adapter`), and where a
deployed model would differ from this one in more than its weights: widths that change after quantization
(switchable, CPT) and quantized activations or KV cache (`act_bits`, `kv_bits`).

With a `deploy` format (qlbench.study.deploy; unset: none of this), the merged model is also requantized in that
serving format by the backend that declares it (its `deploy(model, choices, settings)`), from the same merged weights:
`deploy` (the format as written), `deployed_eval_loss` and `deployed_eval_<metric>`, and `deploy_types` (JSON:
module -> the type each layer really got); for a list of formats, those columns once per format, suffixed `@NAME`. A 16-bit cell gets them too (the merged fine-tune deployed as it is
served); NaN where the cell's widths change or it quantizes activations or the KV cache."""

from __future__ import annotations

import time

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized

LOSSES = ("merged_eval_loss", "merged_requant_eval_loss")
NOTHING = "nothing in the base is quantized"


def skipped(ctx: Context, quantized: Quantized) -> str | None:
    """Why this cell gets no merged numbers (None: it does)."""
    q = ctx.settings.quant
    if not quantized.plan:
        return NOTHING
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
    from qlbench.study import deploy as deploylib

    value = ctx.settings.quant.deploy
    targets = deploylib.parse_all(value)
    why = skipped(ctx, quantized)
    if why == NOTHING and targets:  # a deploy format serves an unquantized cell too, unless more than weights differ
        why = skipped(ctx, Quantized(plan={"": 16}, stats=[], weight_mem_mb=0.0, precision=quantized.precision)) or why
    if why and (not targets or why != NOTHING):
        ctx.log.info(f"no merged (as deployed) numbers: {why}")
        nan = {k: float("nan") for k in LOSSES}
        for target in targets:
            nan.update(deploy_nan(ctx, target, deploylib.suffix(value, target)))
        return nan | deploy_label(value, targets)
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
    for target in targets:  # the same merged weights, in each serving format (a copy: the requant below is in place)
        columns.update(deployed(ctx, merged, base, quantized, target, deploylib.suffix(value, target)))
    columns.update(deploy_label(value, targets))
    if why:  # a 16-bit cell: nothing of its own to requantize
        columns.update({f"merged_requant_eval_{k}": float("nan") for k in scores_keys(columns)})
    else:
        quant.backend(ctx.settings.quant.backend).apply(merged, quantized.plan, ctx.settings)
        columns.update({f"merged_requant_eval_{k}": v for k, v in scores(ctx, merged, base).items()})
    del merged
    columns["merged_s"] = time.perf_counter() - t0
    for target in targets:
        ctx.log.info(f"deployed as {target.label}: eval loss "
                     f"{columns['deployed_eval_loss' + deploylib.suffix(value, target)]:.4f}")
    ctx.log.info(f"as deployed ({n} adapters merged): eval loss {columns['merged_eval_loss']:.4f} merged at 16 bits, "
                 f"{columns['merged_requant_eval_loss']:.4f} merged and quantized again "
                 f"({columns['merged_s']:.1f}s)")
    return columns


def scores_keys(columns: dict) -> list[str]:
    """The score names (loss, metrics) of the merged columns already made."""
    return [k.removeprefix("merged_eval_") for k in columns if k.startswith("merged_eval_")]


def deploy_label(value, targets) -> dict:
    """The row's `deploy` column: the format, or a list's formats joined by `, ` (none when unset)."""
    return {"deploy": ", ".join(t.label for t in targets)} if targets else {}


def deploy_nan(ctx: Context, target, end: str = "") -> dict:
    """The deploy columns of a cell that gets none: NaN numbers, no types."""
    from qlbench import registry

    metrics = ("loss", *registry.tasks()[ctx.settings.data.task].metrics)
    return {**{f"deployed_eval_{k}{end}": float("nan") for k in metrics}, f"deploy_types{end}": ""}


def deployed(ctx: Context, merged, base: Base, quantized: Quantized, target, end: str = "") -> dict:
    """The merged model requantized in the `deploy` format (a deep copy; the merged model is left as it was)."""
    import copy
    import json

    from qlbench import quant
    from qlbench.cell.evaluate import scores

    served = copy.deepcopy(merged)
    choices = target.choices(quantized.plan, ctx.layout)
    rows = quant.backend(target.backend).deploy(served, choices, ctx.settings)
    out = {**{f"deployed_eval_{k}{end}": v for k, v in scores(ctx, served, base).items()},
           f"deploy_types{end}": json.dumps({r["module"]: r["type"] for r in rows}, sort_keys=True)}
    del served
    return out
