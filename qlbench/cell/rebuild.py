"""One finished cell's merged model, rebuilt from its folder for an export (`qlbench export --cell`): the base loaded
and quantized as the cell did (for its plan), LoRA attached, the saved adapter loaded, and the adapter merged into a
fresh 16-bit base exactly as the cell's as-deployed stage merged it (`qlbench.cell.deployed.merge_into`), so an
exported file holds the weights the cell's `deployed_eval_*` / `merged_requant_eval_*` columns were measured on.
A recommendation's export measures its file against the 16-bit base with the study's eval data (`base_for`).
The command builds it and hands it to a format's writer (`qlbench/export/`, a floor below: it never imports a cell);
torch is imported when it is called."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from qlbench.errors import QlbenchError


@dataclass
class CellModel:
    ctx: object  # the cell's Context (settings, layout, task, device)
    base: object  # its Base: tokenizer, the task's data (eval blocks)
    merged: object  # the adapter merged into the 16-bit base, float, on the cell's device
    plan: dict  # module -> width, as the cell quantized its base
    row: dict  # the cell's row (its measured columns)

    def eval_loss(self, model) -> float:
        """`model`'s eval loss on the cell's held-out blocks, as the cell measures it."""
        from qlbench.cell.evaluate import eval_loss_of

        return eval_loss_of(self.ctx, model.to(self.ctx.device), self.base.data.eval)


def rebuild(study, results_root: Path, cell_path: str, threads: int = 1) -> CellModel:
    import polars as pl
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from qlbench.cell.attach import attach
    from qlbench.cell.context import begin
    from qlbench.cell.deployed import merge_into
    from qlbench.cell.load import base_dtype, head_kwargs, load
    from qlbench.cell.quantize import quantize
    from qlbench.data import models
    from qlbench.study import config as studylib, grid

    cell = grid.parse(cell_path)
    folder = Path(results_root) / "cells" / cell.path
    if not (folder / grid.ROW).exists() or not (folder / grid.ADAPTER).exists():
        raise QlbenchError(f"cell {cell.path}: no finished row and adapter in {folder} (run it first)")
    row = pl.read_parquet(folder / grid.ROW).drop("curve", strict=False).row(0, named=True)
    with tempfile.TemporaryDirectory(prefix="qlbench-export-") as scratch:  # begin() writes a log: not the cell's
        ctx = begin(study, cell, Path(scratch), studylib.cell_settings(study, bits=cell.bits), threads)
        if row.get("config_hash") != ctx.config_hash:
            raise QlbenchError(f"cell {cell.path}: its row was made under other settings (config {row.get('config_hash')}"
                               f", the study's now {ctx.config_hash}): run it again first")
        base = load(ctx)
        quantized = quantize(ctx, base)
        model = attach(ctx, base, quantized)
        set_peft_model_state_dict(model, load_file(str(folder / grid.ADAPTER)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.cell.seed)
            merged, _ = models.load(ctx.spec, ctx.cell.model, ctx.study.resources,
                                    dtype=base_dtype(ctx.settings.runtime.base_dtype, ctx.device),
                                    head=ctx.task.HEAD, head_kwargs=head_kwargs(ctx))
        merged.to(ctx.device).requires_grad_(False)
        merge_into(merged, model)
        for h in list(ctx.log.handlers):  # the scratch folder goes: close its log
            ctx.log.removeHandler(h)
            h.close()
    return CellModel(ctx=ctx, base=base, merged=merged.eval(), plan=dict(quantized.plan), row=row)


def base_for(study, row: dict, threads: int = 1) -> CellModel:
    """The 16-bit base of a recommendation row's model, with the eval blocks its cells are scored on (the study's
    first seed; the row's rank and N where it has them), as a CellModel whose `merged` is the base itself (no
    adapter) and whose plan and row are empty: what `qlbench export` measures a recommendation's file against."""
    from qlbench.cell.context import begin
    from qlbench.cell.load import load
    from qlbench.study import config as studylib, grid

    n = f"/n{int(row['n_train'])}" if row.get("n_train") is not None else ""
    rank = int(row["rank"]) if row.get("rank") is not None else study.ranks[0]
    cell = grid.parse(f"{row['model']}{n}/b16/r{rank}/none/s{study.seeds[0]}")
    with tempfile.TemporaryDirectory(prefix="qlbench-export-") as scratch:  # begin() writes a log: not a cell's
        ctx = begin(study, cell, Path(scratch), studylib.cell_settings(study, bits=16), threads)
        base = load(ctx)
        for h in list(ctx.log.handlers):
            ctx.log.removeHandler(h)
            h.close()
    return CellModel(ctx=ctx, base=base, merged=base.model.eval(), plan={}, row={})
