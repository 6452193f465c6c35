"""The parquet schemas of a cell's outputs, their atomic writes, and the provenance every row carries."""

from __future__ import annotations

import os
import platform
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import polars as pl

COORDS = {
    "study": pl.String, "model": pl.String, "bits": pl.Int64, "rank": pl.Int64, "mask": pl.String,
    "seed": pl.Int64, "n_train": pl.Int64,
    "targets": pl.String,  # the LoRA targets (preset or module list): an axis of some studies, a setting of others
}
SETTINGS = {
    "dataset": pl.String, "format": pl.String, "backend": pl.String, "high_bits": pl.Int64,
    "adapter_bits": pl.Int64, "act_bits": pl.String, "kv_bits": pl.String, "targets": pl.String,
    "lora_alpha": pl.Float64, "steps": pl.Int64, "lr": pl.Float64, "batch_size": pl.Int64, "seq_len": pl.Int64, "settings_json": pl.String,
}
METRICS = {
    "status": pl.String,  # ok | diverged
    "eval_loss_before": pl.Float64,  # after quantization, before any training
    "eval_loss": pl.Float64,
    "eval_ppl": pl.Float64,
    "train_loss_final": pl.Float64,
    "step_time_s": pl.Float64,
    "tokens_per_s": pl.Float64,
    "peak_mem_mb": pl.Float64,
    "trainable_params": pl.Int64,
    "n_quantized": pl.Int64,  # modules below 16 bits
    "quantized_params": pl.Int64,  # weights those modules hold (QLoRA's predicted bytes count these)
    "base_params": pl.Int64,  # parameters of the base model (tied weights once)
    "bits_per_param": pl.Float64,  # weight_mem_mb in bits over base_params
    "train_examples": pl.Int64,  # N of the bounds: examples the LoRA trained on
    "quant_mse": pl.Float64,  # mean over quantized modules
    "quant_rel_err": pl.Float64,
    "weight_mem_mb": pl.Float64,  # bytes the quantized base holds (fake: what its format would take), MiB
    "steps_done": pl.Int64,
    "resumed_from": pl.Int64,
    "wall_s": pl.Float64,
}
# Metrics of rows written since these were added: optional, so an older row without them still reads as finished
# (`finished.row_required` asks for ROW_SCHEMA's columns only); a row carries them as extra columns.
OPTIONAL_METRICS = {
    "init_error": pl.Float64,  # mean over quantized modules of ‖W − (Q + s·B·A)‖_F as training starts
    "init_error_default": pl.Float64,  # … of ‖W − Q(W)‖_F, the default init's (equal to init_error unless LoftQ)
    "merged_eval_loss": pl.Float64,  # adapter merged into the 16-bit base (W + s·B·A); NaN: nothing quantized
    "merged_requant_eval_loss": pl.Float64,  # that merged model quantized again with the cell's plan and backend
    "merged_s": pl.Float64,  # seconds the two merged evaluations took, the reload included
    "compile_s": pl.Float64,  # under `compile`: the first step's time beyond a usual step's (the compilation)
}
# The numerics version: what a row's numbers come from beyond its settings. A change to the code that moves numbers
# on purpose (or was found to) bumps it, with a line below; the cells' identities stay as they are. A row records the
# version that made it (`numerics`; a row written before the column: 0) and one of another version reads stale
# (`numerics_stale`: `qlbench status`, the aggregate, a cell's lock; the workflow's cell rule has it as a param), so
# the numbers of two versions never mix in one table. What it pins: tests/workflow/test_demo.py, the demo's rows bit for bit.
#   0  rows before the column: numbers no test held to a pin. Two runs of the demo (2026-12-01, 2026-12-06) differ in
#      every cell, by their machines: the code of either makes 2026-12-06's on this one (docs/studies/demo.md).
#   1  2026-12-07: the demo's rows pinned bit for bit (tests/data/reference/demo/2026-12-06, tests/workflow/test_demo.py).
NUMERICS = 1
PROVENANCE = {
    "config_hash": pl.String, "qlbench_version": pl.String, "torch_version": pl.String,
    "transformers_version": pl.String, "peft_version": pl.String, "python_version": pl.String,
    "host": pl.String, "device": pl.String, "threads": pl.Int64, "finished_at": pl.String,
    "numerics": pl.Int64,  # NUMERICS of the code that made the row
}
ROW_SCHEMA = pl.Schema({**COORDS, **SETTINGS, **METRICS, **PROVENANCE})
STEP = {
    "step": pl.Int64, "loss": pl.Float64, "lr": pl.Float64, "grad_norm": pl.Float64, "step_time_s": pl.Float64,
    "grad_var": pl.Float64,  # σ_g² across micro-batches at the probe steps (setting grad_var_points), else NaN
}
CURVE_SCHEMA = pl.Schema({**COORDS, **STEP})  # curves.parquet: a row per training step of every cell
# The row carries its cell's training curve, a list of steps: the control plane reads one file per cell (10,000
# cells: 10,000 small files, not 20,000). Cells written before it did keep theirs in curve.parquet beside the row.
CURVE = "curve"
CURVE_DTYPE = pl.List(pl.Struct(STEP))
LAYERS_SCHEMA = pl.Schema({
    **COORDS, "module": pl.String, "module_bits": pl.Int64, "numel": pl.Int64, "quant_mse": pl.Float64,
    "quant_rel_err": pl.Float64, "quant_snr_db": pl.Float64,
    "noise_var_uniform": pl.Float64,  # the uniform-noise model Δ²/12, Δ = 2^(1-b)·max|w|
    "noise_ratio": pl.Float64,  # measured quant_mse / noise_var_uniform
    "init_error": pl.Float64,  # ‖W − (Q + s·B·A)‖_F as training starts (default init: B = 0, so ‖W − Q‖_F)
    "init_error_default": pl.Float64,  # ‖W − Q(W)‖_F: the default init's, for comparison under lora_init loftq
})
TIMING_COLUMNS = ("step_time_s", "tokens_per_s", "peak_mem_mb", "wall_s", "scan_s", "merged_s", "compile_s")  # differ run to run


def row_frame(row: dict, curve: list[dict] | None = None) -> pl.DataFrame:
    """One cell's row with the schema's types; extra measurements (per-layer, gradient) keep their own columns, and
    `curve` (the training loop's steps) goes last, as the column `curve`."""
    missing = [k for k in ROW_SCHEMA if k not in row]
    if missing:
        raise ValueError(f"row lacks columns {missing}")
    core = pl.DataFrame([{k: row[k] for k in ROW_SCHEMA}], schema=ROW_SCHEMA)
    extra = {k: v for k, v in row.items() if k not in ROW_SCHEMA}
    typed = {k: t for k, t in OPTIONAL_METRICS.items() if k in extra}
    parts = [core] + ([pl.DataFrame([extra], schema_overrides=typed)] if extra else [])
    if curve is not None:
        steps = [{**{k: r[k] for k in STEP if k != "grad_var"}, "grad_var": r.get("grad_var", float("nan"))}
                 for r in curve]
        parts.append(pl.DataFrame({CURVE: [steps]}, schema={CURVE: CURVE_DTYPE}))
    return pl.concat(parts, how="horizontal") if len(parts) > 1 else core


def curve_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """curves.parquet from rows: each row's `curve` unnested, a row per step under its cell's coordinates."""
    # a curve of no steps gives none (polars 1 explodes [] to a null step)
    steps = rows.select(*COORDS, CURVE).filter(pl.col(CURVE).list.len() > 0)
    return steps.explode(CURVE).unnest(CURVE).select([pl.col(c).cast(t) for c, t in CURVE_SCHEMA.items()])


def layers_frame(coords: dict, stats: list[dict]) -> pl.DataFrame:
    """layers.parquet: the quantization error of each quantized module (no rows for a 16-bit cell)."""
    nan = float("nan")
    rows = [{**coords, "module": m["module"], "module_bits": m["bits"], "numel": m.get("numel"),
             "quant_mse": m["quant_mse"], "quant_rel_err": m.get("quant_rel_err", nan),
             "quant_snr_db": m.get("quant_snr_db", nan), "noise_var_uniform": m.get("noise_var_uniform", nan),
             "noise_ratio": m["quant_mse"] / m["noise_var_uniform"] if m.get("noise_var_uniform") else nan,
             "init_error": m.get("init_error", nan), "init_error_default": m.get("init_error_default", nan)}
            for m in stats]
    frame = pl.DataFrame(rows, schema=LAYERS_SCHEMA)
    if any("type" in m for m in stats):  # a backend of named types (gguf): the type each layer really got
        frame = frame.with_columns(module_type=pl.Series([m.get("type") for m in stats], dtype=pl.String))
    return frame


PROBE_SCHEMA = pl.Schema({
    **COORDS, "module": pl.String, "probe_bits": pl.Int64, "fisher_trace": pl.Float64, "noise_power": pl.Float64,
    "estimate": pl.Float64, "numel": pl.Int64,  # numel: the module's weights, what a bit budget is counted over
    "fisher_examples": pl.Int64, "hessian_trace": pl.Float64, "hessian_estimate": pl.Float64,
    "hutchinson_samples": pl.Int64,
})


def probe_frame(coords: dict, rows: list[dict]) -> pl.DataFrame:
    """probe.parquet: the one-pass sensitivity estimate of each module (no rows unless the cell probed)."""
    return pl.DataFrame([{**coords, **r} for r in rows], schema=PROBE_SCHEMA)


def setting_values(rows: pl.DataFrame, key: str, default=None) -> list:
    """Each row's value of a setting as its `settings_json` holds it (the cell's identity: an unset setting is absent
    there and reads as `default`; rows without the column read as `default` too)."""
    import json

    if "settings_json" not in rows.columns:
        return [default] * rows.height
    return [json.loads(j).get(key, default) if j else default for j in rows["settings_json"]]


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path`; rename it into place only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def numerics_stale(version) -> str | None:
    """Why a row of numerics `version` (None: a row without the column, version 0) is stale; None where it is current.
    Its numbers may equal the current code's (rows made after a change but before its bump): rerunning it costs a
    cell and makes the same row again, with the version on it."""
    version = 0 if version is None else int(version)
    return None if version == NUMERICS else f"made by numerics {version}, the code's are {NUMERICS}"


def provenance(config_hash: str, device: str, threads: int) -> dict:
    return {
        "config_hash": config_hash,
        "qlbench_version": _version("qlbench"),
        "torch_version": _version("torch"),
        "transformers_version": _version("transformers"),
        "peft_version": _version("peft"),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "device": device,
        "threads": threads,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "numerics": NUMERICS,
    }
