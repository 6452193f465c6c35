"""One cell, start to finish: load, quantize, measure, attach LoRA, train, evaluate, write.

The cell knows nothing of Snakemake or SLURM: it takes its coordinates and writes files into its folder —
`row.parquet` last, so a folder with a row is a finished cell and one without is not.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

from qlbench import plant
from qlbench.errors import QlbenchError
from qlbench.grid import Cell
from qlbench.study import Study

ROW, CURVE, ADAPTER, LOG, CHECKPOINT = "row.parquet", "curve.parquet", "adapter.safetensors", "log.txt", "checkpoint.pt"
LAYERS, GENERATIONS, PROBE = "layers.parquet", "generations.parquet", "probe.parquet"
FAILED_ONCE = plant.FAILED_ONCE  # marker of a planted first-attempt failure (tests of retries)


def cell_logger(out: Path) -> logging.Logger:
    log = logging.getLogger(f"qlbench.cell.{out}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(out / LOG), logging.StreamHandler()):
            handler.setFormatter(fmt)
            log.addHandler(handler)
    return log


def check_cell(study: Study, cell: Cell) -> None:
    """Coordinates outside the grid are allowed, but must be valid."""
    if cell.model not in study.config["models"]:
        raise QlbenchError(f"unknown model {cell.model!r}; models: {', '.join(study.config['models'])}")
    if not (2 <= cell.bits <= 8 or cell.bits == 16):
        raise QlbenchError(f"{cell.bits} bits is not a supported width (use 2-8 or 16)")
    if cell.rank < 1:
        raise QlbenchError(f"rank {cell.rank}: must be at least 1")


class StopFlag:
    """SIGTERM, SIGUSR1 (SLURM's warning before a time limit) and SIGUSR2 (submitit's) ask the loop to checkpoint
    and stop; so does the SLURM job's time limit drawing near, which no signal announces to the cell (timelimit.py)."""

    def __init__(self):
        from qlbench import timelimit

        self.requested = False
        self.deadline = timelimit.stop_time()  # None outside SLURM
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            self.requested = True
        return self.requested


def run(study: Study, cell: Cell, out: Path, settings: dict, threads: int = 1) -> dict:
    import torch

    from qlbench import data, fisher, models, masks, precision, quant, results, lora, measure, generate, gradstats
    from qlbench.quant import activations, adapters, memory as quant_memory
    from qlbench.evaluate import eval_loss, perplexity
    from qlbench.study import config_hash
    from qlbench.train import LoopSettings, train

    t_start = time.perf_counter()
    check_cell(study, cell)
    out.mkdir(parents=True, exist_ok=True)
    (out / ROW).unlink(missing_ok=True)  # a re-run must not leave the old row looking current
    log = cell_logger(out)
    stop = StopFlag()
    spec = study.model(cell.model)
    lay = study.layout(cell.model)
    masked = masks.resolve(cell.mask, lay)
    settings = {**settings, "targets": settings["targets"] or None}
    if settings["targets"] is None:
        settings["targets"] = lora.DEFAULT_TARGETS[spec["arch"]]
    dataset_spec = study.config["datasets"][settings["dataset"]]
    identity = {k: v for k, v in settings.items() if k != "fail"}  # planted trouble changes no number
    chash = config_hash({"model": spec, "dataset": dataset_spec, "settings": identity, "cell": cell.coords()})
    log.info(f"cell {study.name}/{cell.path}  config {chash}")
    plants = plant.for_cell(settings["fail"], cell.path)  # testing only
    plant.before_training(plants, out)

    torch.set_num_threads(threads)
    torch.manual_seed(cell.seed)
    device = measure.pick_device(settings["device"])
    autocast = None if settings["compute_dtype"] == "float32" else getattr(torch, settings["compute_dtype"])
    resources = study.config.get("resources", "resources")
    model, tokenizer = models.load(spec, cell.model, resources)
    train_ex, eval_ex = data.load_examples(dataset_spec, settings["dataset"])
    if cell.n_train is not None:
        train_ex = train_ex[: cell.n_train]
    train_blocks = data.blocks(tokenizer, [e.text for e in train_ex], settings["seq_len"])
    eval_blocks = data.blocks(tokenizer, [e.text for e in eval_ex], settings["seq_len"])
    if settings["eval_batches"]:
        eval_blocks = eval_blocks[: settings["eval_batches"] * settings["batch_size"]]
    log.info(f"data: {len(train_ex)} train examples ({train_blocks.shape[0]} blocks), "
             f"{len(eval_ex)} eval examples ({eval_blocks.shape[0]} blocks)")

    model.to(device)
    model.requires_grad_(False)
    base_params = measure.unique_params(model)  # before quantization packs any weight
    sampler = data.batch_sampler(train_blocks, settings["batch_size"], cell.seed)
    probe = []
    if settings["probe_bits"] and (cell.bits == 16 or cell.mask == "none"):  # reference cells only
        probe = fisher.estimate(model, lay.all_names(), settings["probe_bits"], settings, sampler,
                                settings["probe_batches"], device)
        log.info(f"estimated the sensitivity of {len(probe)} modules at {settings['probe_bits']} bits")
    if settings["bits_target"] == "adapter":  # the bounds study: `bits` quantizes LoRA's A and B, not the base
        settings = {**settings, "adapter_bits": cell.bits}
    base_bits = cell.bits if settings["bits_target"] == "base" else 16
    plan = quant.plan(lay.all_names(), masked, base_bits, settings["high_bits"]) if base_bits < 16 else {}
    if base_bits < 16:
        plan = quant.with_layer_bits(plan, {m: b for mask, b in settings["layer_bits"].items()
                                            for m in masks.resolve(mask, lay)})
    switching = None
    if settings["switch_bits"] and base_bits < 16:  # QaLoF: the masked layers switch width, one adapter each
        plan = {m: b for m, b in plan.items() if m not in set(masked)}
        switching = precision.Switching(model, masked, settings["switch_bits"], settings, cell.seed)
        switching.use(cell.bits)
    qstats = quant.backend(settings["backend"]).apply(model, plan, settings)
    weight_mem_mb = quant_memory.weight_mem_mb(model, qstats)
    act_kv = (list(plan), settings["act_bits"], settings["kv_bits"], spec["arch"], spec["n_layer"])
    hooks = activations.apply(model, *act_kv) if base_bits < 16 else []
    log.info(f"quantized {len(plan)} modules ({settings['backend']} {settings['format']}), mask {cell.mask!r}")
    measure.reset_peak(device)
    loss_before = eval_loss(model, eval_blocks, settings["batch_size"], device, autocast)
    log.info(f"eval loss before training: {loss_before:.4f}")

    torch.manual_seed(cell.seed)  # the same LoRA init for every bit width of a seed
    model = lora.attach(model, cell.rank, settings, spec["arch"])
    adapters.apply(model, settings["adapter_bits"])  # 16: off
    if switching:
        model = switching.attach(model)
    if hooks:  # again, around the LoRA wrappers, so the adapter path sees the same quantized activations
        for hook in hooks:
            hook.remove()
        activations.apply(model, *act_kv)
    loop = LoopSettings(steps=settings["steps"], lr=settings["lr"], warmup=settings["warmup"],
                        weight_decay=settings["weight_decay"], grad_clip=settings["grad_clip"],
                        checkpoint_every=settings["checkpoint_every"], autocast_dtype=autocast,
                        optimizer=settings["optimizer"])
    probe_steps = gradstats.probe_steps(settings["steps"], settings["grad_var_points"])
    grad_var = gradstats.GradVariance(model, sampler, probe_steps, device, autocast)
    trained = train(model, sampler, loop, device=device, checkpoint=out / CHECKPOINT,
                    stop_requested=stop, on_step=plant.with_kill(grad_var, plants, out),
                    before_step=switching.before_step if switching else None, log=log.info)
    grad_var.merge_into(trained.curve)
    switch_columns = switching.evaluate(
        eval_blocks, settings["batch_size"], lambda b: eval_loss(model, b, settings["batch_size"], device, autocast),
        cell.bits) if switching else {}
    final = eval_loss(model, eval_blocks, settings["batch_size"], device, autocast)
    log.info(f"eval loss after training: {final:.4f} ({trained.status})")
    peak_mem = measure.peak_mem_mb(device)  # before generation: the peak of training and evaluation
    generations = generate.generate(model, tokenizer, generate.probe_examples(eval_ex), device, autocast)
    log.info(f"generated {len(generations)} probe outputs")

    step_time = measure.step_time_s(trained.curve)
    coords = {"study": study.name, **cell.coords()}
    row = {
        **coords,
        "dataset": settings["dataset"], "format": settings["format"], "backend": settings["backend"],
        "high_bits": settings["high_bits"], "adapter_bits": settings["adapter_bits"],
        "act_bits": settings["act_bits"], "kv_bits": settings["kv_bits"],
        "targets": lora.label(settings["targets"]), "lora_alpha": lora.alpha_for(settings["lora_alpha"], cell.rank),
        "steps": settings["steps"], "lr": settings["lr"], "batch_size": settings["batch_size"],
        "seq_len": settings["seq_len"], "settings_json": _json(identity),
        "status": trained.status,
        "eval_loss_before": loss_before,
        "eval_loss": final,
        "eval_ppl": perplexity(final),
        "train_loss_final": trained.curve[-1]["loss"] if trained.curve else float("nan"),
        "step_time_s": step_time,
        "tokens_per_s": settings["batch_size"] * settings["seq_len"] / step_time,
        "peak_mem_mb": peak_mem,
        "trainable_params": measure.trainable_params(model),
        "n_quantized": len(plan),
        "train_examples": len(train_ex),
        "quant_mse": _mean(s["quant_mse"] for s in qstats),
        "quant_rel_err": _mean(s["quant_rel_err"] for s in qstats),
        "weight_mem_mb": weight_mem_mb,
        "base_params": base_params,
        "bits_per_param": weight_mem_mb * 2**20 * 8 / base_params,
        "quant_snr_db": _mean(s["quant_snr_db"] for s in qstats if math.isfinite(s["quant_snr_db"])),
        "quant_noise_ratio": _mean(s["quant_mse"] / s["noise_var_uniform"] for s in qstats
                                   if s.get("noise_var_uniform")),  # measured / uniform model Δ²/12
        **grad_var.row_columns(),
        **generate.row_columns(generations),
        **switch_columns,
        "steps_done": len(trained.curve),
        "resumed_from": trained.resumed_from,
        "wall_s": time.perf_counter() - t_start,
        **results.provenance(chash, measure.device_name(device), threads),
    }
    results.write_parquet(results.layers_frame(coords, qstats), out / LAYERS)
    results.write_parquet(results.probe_frame(coords, probe), out / PROBE)
    results.write_parquet(generate.frame(coords, generations), out / GENERATIONS)
    _write_outputs(out, row, coords, trained.curve, lora.adapter_state(model))
    (out / CHECKPOINT).unlink(missing_ok=True)
    log.info(f"done in {row['wall_s']:.1f}s: eval_loss {final:.4f}, {step_time * 1000:.0f} ms/step")
    return row


def _write_outputs(out: Path, row: dict, coords: dict, curve: list[dict], adapter: dict) -> None:
    from safetensors.torch import save_file

    from qlbench import results

    with results.atomic_path(out / ADAPTER) as tmp:
        save_file(adapter, str(tmp))
    results.write_parquet(results.curve_frame(coords, curve), out / CURVE)
    results.write_parquet(results.row_frame(row), out / ROW)  # last: its presence marks the cell complete


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _json(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True, default=str)
