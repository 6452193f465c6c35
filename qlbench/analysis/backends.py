"""The backend table: one row per backend × format × width of a model's cells, from several studies at once (one
per backend and format, the backend being a fixed setting), with the eval loss of the quantized base before
training, after LoRA, and as deployed — the adapter merged into the 16-bit base, and that merged model quantized
again with the cell's own backend (`qlbench.cell.deployed`). Means over seeds, each with its 95% t interval's
half-width (`<loss>_ci`, NaN for one seed); `symmetric: false` and a set `group_size` are rows of their own.
Each loss also as a cost over the 16-bit reference paired by seed (`<loss>_cost`, `<loss>_cost_ci`): the seed's
difference to the reference cell of the same seed (before LoRA against the reference before LoRA, every later
column against the reference after LoRA: what the run would have scored unquantized), then its mean and interval
over the seeds both have. Seeds share their batches, so the paired interval is what tells two widths apart.

The 16-bit cells are the reference row, labelled by what the model's weights really were (`REFERENCE`: SmolLM2's
offline weights were Q4_1 before dequantization). A width the backend's library has but the backend cannot run here
(its declaration's `unavailable`, e.g. torchao's int4 on a CPU) is a row too, with the measured reason and no
numbers, rather than a silent gap. Polars only, no torch.
"""

from __future__ import annotations

import polars as pl

from qlbench import registry
from qlbench.analysis.stats import ci95_halfwidth
from qlbench.results import setting_values

LOSSES = ("eval_loss_before", "eval_loss", "merged_eval_loss", "merged_requant_eval_loss")
FORMAT_NAMES = {"int": "int", "nf": "NF", "fp": "FP"}
# the 16-bit row of a model by its source: what "no quantization" means for those weights
REFERENCE = {
    "smollm2": "16-bit reference: the Q4_1 GGUF dequantized to fp32 (not the original bf16)",
}
DEFAULT_REFERENCE = "16-bit reference (no quantization)"
COLUMNS = {"model": pl.String, "backend": pl.String, "format": pl.String, "bits": pl.Int64, "symmetric": pl.Boolean,
           "group_size": pl.Int64, "quantizer": pl.String, "status": pl.String, "seeds": pl.Int64,
           **{m: pl.Float64 for m in LOSSES}, **{f"{m}_ci": pl.Float64 for m in LOSSES}, "step_time_s": pl.Float64,
           **{f"{m}_cost": pl.Float64 for m in LOSSES}, **{f"{m}_cost_ci": pl.Float64 for m in LOSSES}}
# each loss's reference column for its paired cost: before LoRA against before; after, merged, requantized against
# the unquantized run after LoRA
COST_AGAINST = {"eval_loss_before": "eval_loss_before", "eval_loss": "eval_loss", "merged_eval_loss": "eval_loss",
                "merged_requant_eval_loss": "eval_loss"}


def quantizer(backend: str, fmt: str, bits: int, symmetric: bool = True, group_size: int | None = None) -> str:
    """A row's name for its quantizer: `NF4`, `int3`, or the name its backend declares for the width (bitsandbytes'
    8 bits: `LLM.int8`, its only 8-bit format; GGUF's Q4_0, or Q4_1 with `symmetric: false`), and its groups when
    the study set them (`g64`)."""
    declared = registry.backends().get(backend)
    names = {} if declared is None else declared.names_asymmetric if not symmetric else declared.names
    name = names.get(bits) or f"{FORMAT_NAMES.get(fmt, fmt)}{bits}" + ("" if symmetric else " asym")
    return name + (f" g{group_size}" if group_size is not None else "")


def _setting(cells: pl.DataFrame, key: str, default, dtype) -> pl.Series:
    """A setting per cell as `dtype`: its column, else its value in `settings_json`, else the default."""
    if key in cells.columns:
        return cells[key].cast(dtype)
    return pl.Series(setting_values(cells, key, default), dtype=dtype)


def _per_seed(group: pl.DataFrame, m: str) -> pl.DataFrame:
    """seed -> the mean of `m` over the group's cells of that seed (NaN and missing values left out)."""
    if m not in group.columns or "seed" not in group.columns:
        return pl.DataFrame(schema={"seed": pl.Int64, m: pl.Float64})
    return (group.filter(pl.col(m).is_not_null() & pl.col(m).cast(pl.Float64).is_not_nan())
            .group_by("seed").agg(pl.col(m).cast(pl.Float64).mean()).with_columns(pl.col("seed").cast(pl.Int64)))


def _mean_ci(values: pl.Series) -> tuple[float | None, float]:
    """The mean of per-seed values and its 95% interval's half-width (NaN below two seeds)."""
    if values.len() == 0:
        return None, float("nan")
    return values.mean(), ci95_halfwidth(values.std(), values.len()) if values.len() >= 2 else float("nan")


def table(cells: pl.DataFrame, unavailable: dict[str, dict[str, dict[int, str]]] | None = None,
          sources: dict[str, str] | None = None) -> pl.DataFrame:
    """`cells`: rows of one or more studies (their cells.parquet, concatenated); `unavailable`: backend -> format ->
    width -> why it cannot run (rows without numbers, for the backends present); `sources`: model -> its config
    `source` (names the reference row)."""
    sources = sources or {}
    # every 16-bit cell is the one reference of its model, whichever study (backend) it ran in
    keyed = cells.with_columns(_setting(cells, "symmetric", True, pl.Boolean).alias("_symmetric"),
                               _setting(cells, "group_size", None, pl.Int64).alias("_group_size"))
    sixteen = pl.col("bits") == 16
    keyed = keyed.with_columns(*(pl.when(sixteen).then(pl.lit("–")).otherwise(pl.col(c)).alias(f"_{c}")
                                 for c in ("backend", "format")),
                               pl.when(sixteen).then(True).otherwise(pl.col("_symmetric")).alias("_symmetric"),
                               pl.when(sixteen).then(None).otherwise(pl.col("_group_size")).alias("_group_size"))
    reference = {model: group for (model,), group in keyed.filter(sixteen).group_by(["model"])}
    rows = []
    for (model, backend, fmt, bits, sym, group_size), group in keyed.group_by(
            ["model", "_backend", "_format", "bits", "_symmetric", "_group_size"], maintain_order=True):
        diverged = int((group["status"] != "ok").sum()) if "status" in group.columns else 0
        row = {"model": model, "backend": backend, "format": fmt, "bits": bits, "symmetric": sym,
               "group_size": group_size, "seeds": group.height,
               "quantizer": REFERENCE.get(sources.get(model), DEFAULT_REFERENCE) if bits == 16
               else quantizer(backend, fmt, bits, sym, group_size),
               "status": "ok" if not diverged else f"diverged ({diverged} of {group.height} seeds)"}
        for m in (*LOSSES, "step_time_s"):
            row[m] = group[m].cast(pl.Float64).mean() if m in group.columns else None
        for m in LOSSES:  # over seeds: the 16-bit cells of several studies at one seed are one seed, not several
            _, row[f"{m}_ci"] = _mean_ci(_per_seed(group, m)[m])
            if bits != 16:  # paired with the reference cell of the same seed
                ref = _per_seed(reference.get(model, keyed.clear()), COST_AGAINST[m]).rename({COST_AGAINST[m]: "_ref"})
                paired = _per_seed(group, m).join(ref, on="seed")
                row[f"{m}_cost"], row[f"{m}_cost_ci"] = _mean_ci(paired[m] - paired["_ref"])
        rows.append(row)
    seen = {(r["model"], r["backend"], r["format"], r["bits"]) for r in rows if r["symmetric"]}
    for model in cells["model"].unique(maintain_order=True):
        for backend in cells.filter(pl.col("model") == model)["backend"].unique(maintain_order=True):
            for fmt, widths in (unavailable or {}).get(backend, {}).items():
                for bits, why in sorted(widths.items()):
                    # the table's widths: those qlbench simulates (the fake backend's, every backend's yardstick)
                    if bits in registry.simulated_widths() and (model, backend, fmt, bits) not in seen:
                        rows.append({"model": model, "backend": backend, "format": fmt, "bits": bits, "seeds": 0,
                                     "symmetric": True,
                                     "quantizer": quantizer(backend, fmt, bits), "status": f"cannot run: {why}"})
    out = pl.DataFrame(rows, schema=COLUMNS) if rows else pl.DataFrame(schema=COLUMNS)
    # the reference first, then by backend, format and width (widest first)
    return out.sort(["model", pl.col("bits") != 16, "backend", "format", "bits", "symmetric"],
                    descending=[False, False, False, False, True, True], maintain_order=True)


def markdown(table_: pl.DataFrame) -> str:
    """The table as Markdown for the docs: losses to 4 decimals (± the 95% interval over seeds), a row that cannot run
    as its reason."""
    lines = ["| model | quantizer | backend | bits | before LoRA | after LoRA | merged, 16-bit | merged, requantized "
             "| s/step | status |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def num(v, digits=4):
        return "–" if v is None or v != v else f"{v:.{digits}f}"

    def loss(r, m):  # the mean, and its 95% interval's half-width where seeds give one
        ci = r.get(f"{m}_ci")
        return num(r[m]) + (f" ± {ci:.4f}" if ci is not None and ci == ci and r[m] is not None else "")

    for r in table_.iter_rows(named=True):
        lines.append(f"| {r['model']} | {r['quantizer']} | {r['backend']} | {r['bits']} | {loss(r, 'eval_loss_before')} "
                     f"| {loss(r, 'eval_loss')} | {loss(r, 'merged_eval_loss')} | {loss(r, 'merged_requant_eval_loss')} "
                     f"| {num(r['step_time_s'], 2)} | {r['status']} |")
    return "\n".join(lines) + "\n"


def cost_markdown(table_: pl.DataFrame) -> str:
    """The quantized rows as costs over the 16-bit reference paired by seed, in nats (± the 95% interval over the
    seeds; a row of one seed has none); the reference row and rows that cannot run are left out."""
    lines = ["| model | quantizer | backend | bits | before LoRA | after LoRA | merged, 16-bit | merged, requantized "
             "| seeds |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cost(r, m):
        v, ci = r.get(f"{m}_cost"), r.get(f"{m}_cost_ci")
        if v is None or v != v:
            return "–"
        return f"{v:+.4f}" + (f" ± {ci:.4f}" if ci is not None and ci == ci else "")

    for r in table_.filter((pl.col("bits") != 16) & (pl.col("seeds") > 0)).iter_rows(named=True):
        lines.append(f"| {r['model']} | {r['quantizer']} | {r['backend']} | {r['bits']} | "
                     + " | ".join(cost(r, m) for m in LOSSES) + f" | {r['seeds']} |")
    return "\n".join(lines) + "\n"
