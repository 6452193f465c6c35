"""What each configuration costs: memory, time, throughput, trainable parameters, bits per parameter — and, as the
QLoRA diagnostic's tables ask, each against the 16-bit configuration of the same model, rank and targets: memory
reduction (%) and relative speed, with the weight memory QLoRA's arithmetic predicts beside the measured one."""

from __future__ import annotations

import json

import polars as pl

from qlbench import registry
from qlbench.study import settings as settings_tree

KEYS = ["model", "backend", "format", "bits", "rank", "mask", "targets", "base_dtype"]
REFERENCE_KEYS = ["model", "rank", "targets"]  # what a configuration shares with its 16-bit reference
DQ_BLOCK = 256  # bitsandbytes' double quantization: one fp32 scale per 256 8-bit block scales


def base_dtype(settings_json: str | None, device: str | None) -> str | None:
    """The dtype the cell's base was loaded in: its `base_dtype` setting, `auto` resolved as the cell resolved it
    (`qlbench.study.settings.base_dtype`; a row's device is a GPU's name or `cpu (N threads)`). None for rows made
    before the setting existed."""
    if not settings_json:
        return None
    setting = json.loads(settings_json).get("base_dtype")
    return None if setting is None else settings_tree.base_dtype(setting, gpu=not (device or "").startswith("cpu"))


def bytes_per_quantized_param(bits: int, fmt: str, backend: str, group_size: int | None,
                              double_quant: bool) -> float | None:
    """QLoRA's count for a blockwise format: the code (bits/8 bytes) plus its share of the block scales — an fp32
    absmax per block of g (4/g bytes), or with double quantization an 8-bit one plus an fp32 scale per 256 of those
    (1/g + 4/(256·g): 0.5 + 0.0159 bytes per parameter for NF4 with g = 64). None where the scales depend on the
    layer's shape (int per output channel, a width its backend declares `row_scaled`: LLM.int8), and for backends
    that store their own way (their declaration's `bytes_per_param` is not "blockwise": hqq, torchao)."""
    declared = registry.backends().get(backend)
    if bits >= 16 or declared is None or declared.bytes_per_param != "blockwise":  # their rows count real bytes
        return None
    if bits in declared.row_scaled:
        return None  # one fp32 scale per row
    if fmt == "int":
        return None if not group_size else bits / 8 + 4 / group_size  # symmetric: one fp32 scale per group
    g = group_size or 64
    return bits / 8 + (1 / g + 4 / (DQ_BLOCK * g) if double_quant else 4 / g)


def _with_settings(cells: pl.DataFrame) -> pl.DataFrame:
    """Columns the table needs from each row's settings: base dtype, group size, double quantization."""
    if "settings_json" not in cells.columns:
        return cells.with_columns(pl.lit(None, pl.String).alias("base_dtype"),
                                  pl.lit(None, pl.Int64).alias("_group_size"),
                                  pl.lit(False).alias("_double_quant"))
    device = cells["device"] if "device" in cells.columns else pl.Series([None] * cells.height, dtype=pl.String)
    settings = [json.loads(s) if s else {} for s in cells["settings_json"]]
    return cells.with_columns(
        pl.Series("base_dtype", [base_dtype(s, d) for s, d in zip(cells["settings_json"], device)], pl.String),
        pl.Series("_group_size", [s.get("group_size") for s in settings], pl.Int64),
        pl.Series("_double_quant", [bool(s.get("double_quant")) for s in settings], pl.Boolean),
    )


def _predicted_weight_mb(row: dict) -> float | None:
    """Unquantized parameters at the 16-bit reference's bytes per parameter, quantized ones at QLoRA's count."""
    per_param = bytes_per_quantized_param(row["bits"], row["format"], row["backend"], row["_group_size"],
                                          row["_double_quant"])
    q, n = row.get("quantized_params"), row.get("base_params")
    ref = row.get("ref_weight_mem_mb")
    if per_param is None or q is None or n is None or ref is None or row.get("ref_base_params") is None:
        return None
    ref_bytes_per_param = ref * 2**20 / row["ref_base_params"]
    return ((n - q) * ref_bytes_per_param + q * per_param) / 2**20


def table(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: medians over seeds of time and throughput, maxima of memory; then memory
    reduction and relative speed against the 16-bit configuration (`bits` 16; with a bf16/fp16 base where the
    study has one, else the fp32 one) of the same model, rank and targets, and the predicted weight memory where
    the row counts its quantized parameters (`quantized_params`)."""
    cells = _with_settings(cells)
    keys = [k for k in KEYS if k in cells.columns]
    wanted = {
        "step_time_s": pl.col("step_time_s").median().alias("step_time_ms") * 1000,
        "tokens_per_s": pl.col("tokens_per_s").median(),
        "peak_mem_mb": pl.col("peak_mem_mb").max(),
        "weight_mem_mb": pl.col("weight_mem_mb").max(),
        "bits_per_param": pl.col("bits_per_param").max(),
        "trainable_params": pl.col("trainable_params").max(),
        "base_params": pl.col("base_params").max(),
        "quantized_params": pl.col("quantized_params").max(),
        "device": pl.col("device").first(),
        "_group_size": pl.col("_group_size").first(),
        "_double_quant": pl.col("_double_quant").first(),
    }
    aggs = [expr for column, expr in wanted.items() if column in cells.columns]
    out = cells.group_by(keys, maintain_order=True).agg(pl.len().alias("cells"), *aggs).sort(
        keys, descending=[k == "bits" for k in keys])
    match = [k for k in REFERENCE_KEYS if k in out.columns]
    have = [c for c in ("peak_mem_mb", "weight_mem_mb", "step_time_ms", "base_params") if c in out.columns]
    if "bits" not in out.columns or not have:
        return out.drop([c for c in out.columns if c.startswith("_")])
    ref = out.filter(pl.col("bits") == 16)
    if "base_dtype" in ref.columns and ref["base_dtype"].is_in(["bfloat16", "float16"]).any():
        ref = ref.filter(pl.col("base_dtype").is_in(["bfloat16", "float16"]))  # a real 16-bit base, when there is one
    ref = ref.group_by(match).agg(
        [pl.col(c).mean().alias(f"ref_{c}") for c in have])
    out = out.join(ref, on=match, how="left", nulls_equal=True)
    extra = []
    if "peak_mem_mb" in have:
        extra.append((100 * (1 - pl.col("peak_mem_mb") / pl.col("ref_peak_mem_mb"))).alias("mem_reduction_pct"))
    if "weight_mem_mb" in have:
        extra.append((100 * (1 - pl.col("weight_mem_mb") / pl.col("ref_weight_mem_mb")))
                     .alias("weight_mem_reduction_pct"))
    if "step_time_ms" in have:
        extra.append((pl.col("ref_step_time_ms") / pl.col("step_time_ms")).alias("relative_speed"))
    out = out.with_columns(extra)
    if {"weight_mem_mb", "base_params"} <= set(have):
        rows = out.to_dicts()
        out = out.with_columns(pl.Series("predicted_weight_mem_mb", [_predicted_weight_mb(r) for r in rows],
                                         pl.Float64))
    return out.drop([c for c in out.columns if c.startswith("_") or c.startswith("ref_")])
