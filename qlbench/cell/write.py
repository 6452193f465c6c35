"""The last stage: the cell's row (coordinates, settings, every final metric, status, provenance, its training curve)
and its files — layers, probe, generations, adapter, and row.parquet last, each written atomically, so a folder
with a row is a finished cell and one without is not."""

from __future__ import annotations

import json
import math
import time

from qlbench.cell.context import Context
from qlbench.cell.evaluate import Evaluated
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized
from qlbench.cell.train import Trained


def write(ctx: Context, model, base: Base, quantized: Quantized, loss_before: float, trained: Trained,
          evaluated: Evaluated) -> dict:
    from safetensors.torch import save_file

    from qlbench import results
    from qlbench.cell import lora
    from qlbench.study import grid
    from qlbench.study.targets import label
    from qlbench.tasks import generate

    out = ctx.out
    coords = {"study": ctx.study.name, **ctx.cell.coords(), "targets": label(ctx.settings.lora.targets)}
    row = _row(ctx, model, base, quantized, loss_before, trained, evaluated, coords)
    results.write_parquet(results.layers_frame(coords, quantized.stats), out / grid.LAYERS)
    results.write_parquet(results.probe_frame(coords, quantized.probe), out / grid.PROBE)
    results.write_parquet(generate.frame(coords, evaluated.generations), out / grid.GENERATIONS)
    with results.atomic_path(out / grid.ADAPTER) as tmp:
        save_file(lora.adapter_state(model), str(tmp))
    # last: its presence marks the cell complete; it carries the training curve (one file per cell to read)
    results.write_parquet(results.row_frame(row, trained.curve), out / grid.ROW)
    ctx.hooks.keep(out, grid.ROW)  # a second name, should a Snakemake job delete it before it runs (cluster/lock.py)
    for leftover in (grid.CHECKPOINT, grid.CHECKPOINT_STAMP):
        (out / leftover).unlink(missing_ok=True)
    ctx.log.info(f"done in {row['wall_s']:.1f}s: eval_loss {evaluated.eval_loss:.4f}, "
                 f"{row['step_time_s'] * 1000:.0f} ms/step")
    return row


def _row(ctx: Context, model, base: Base, quantized: Quantized, loss_before: float, trained: Trained,
         evaluated: Evaluated, coords: dict) -> dict:
    from qlbench import results
    from qlbench.cell import measure
    from qlbench.study.targets import alpha_for, label
    from qlbench.tasks import generate

    s, stats, final = ctx.settings, quantized.stats, evaluated.eval_loss
    q, t = s.quant, s.train
    step_time = measure.step_time_s(trained.curve)
    return {
        **coords,
        "task": s.data.task, "dataset": s.data.dataset, "format": q.format, "backend": q.backend,
        "high_bits": q.high_bits, "adapter_bits": q.adapter_bits,
        "act_bits": str(q.act_bits), "kv_bits": str(q.kv_bits),  # a width, or `follow`
        "targets": label(s.lora.targets), "lora_alpha": alpha_for(s.lora.alpha, ctx.cell.rank),
        "steps": t.steps, "lr": t.lr, "batch_size": t.batch_size,
        "seq_len": t.seq_len, "settings_json": json.dumps(ctx.identity, sort_keys=True, default=str),
        "status": trained.status,
        "eval_loss_before": loss_before,
        "eval_loss": final,
        "eval_ppl": ctx.task.perplexity(final),
        "train_loss_final": trained.curve[-1]["loss"] if trained.curve else float("nan"),
        "step_time_s": step_time,
        "tokens_per_s": t.batch_size * t.seq_len / step_time,
        "peak_mem_mb": evaluated.peak_mem_mb,
        "trainable_params": measure.trainable_params(model),
        "n_quantized": len(quantized.plan),
        "quantized_params": sum(q["numel"] for q in stats),
        "train_examples": base.train_examples,
        "quant_mse": _mean(q["quant_mse"] for q in stats),
        "quant_rel_err": _mean(q["quant_rel_err"] for q in stats),
        "weight_mem_mb": quantized.weight_mem_mb,
        "base_params": base.base_params,
        "bits_per_param": quantized.weight_mem_mb * 2**20 * 8 / base.base_params,
        "quant_snr_db": _mean(q["quant_snr_db"] for q in stats if math.isfinite(q["quant_snr_db"])),
        "quant_noise_ratio": _mean(q["quant_mse"] / q["noise_var_uniform"] for q in stats
                                   if q.get("noise_var_uniform")),  # measured / uniform model Δ²/12
        "init_error": _mean(q["init_error"] for q in stats),  # mean over quantized modules (layers.parquet)
        "init_error_default": _mean(q["init_error_default"] for q in stats),
        **trained.grad_var,
        **generate.row_columns(evaluated.generations),
        **evaluated.columns,
        **({"compile_s": measure.compile_s(trained.curve)} if s.runtime.compile != "off" else {}),
        "steps_done": len(trained.curve),
        "resumed_from": trained.resumed_from,
        "wall_s": time.perf_counter() - ctx.t_start,
        **results.provenance(ctx.config_hash, measure.device_name(ctx.device), ctx.threads),
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
