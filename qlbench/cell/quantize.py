"""Stage 3: quantize the base. A reference cell first probes every module's sensitivity on the unquantized base
(Fisher × quantization noise); then the plan (module -> width: the mask at `bits`, the rest at `high_bits`, pinned
`layer_bits` on top) goes to the study's backend, and each quantized module's error is kept."""

from __future__ import annotations

from dataclasses import dataclass, field

from qlbench.cell.context import Context
from qlbench.cell.load import Base


@dataclass
class Quantized:
    plan: dict[str, int]  # module -> bit width of every module below 16 bits, as training starts
    stats: list[dict]  # one row per quantized module: error, bytes
    weight_mem_mb: float  # what the base's weights take at these widths
    probe: list[dict] = field(default_factory=list)  # one-pass sensitivity estimates (reference cells only)
    precision: object = None  # QaLoF: widths that change after quantization (cell.precision.Precision), or None
    loftq: dict = field(default_factory=dict)  # lora_init loftq: module -> its fitted factors (quant.loftq.finish)


def quantize(ctx: Context, base: Base) -> Quantized:
    from qlbench import quant
    from qlbench.cell import fisher
    from qlbench.quant import memory
    from qlbench.study import masks

    settings, lay, model = ctx.settings, ctx.layout, base.model
    q, measured = settings.quant, settings.eval
    probe = []
    if measured.probe_bits and ctx.is_reference:
        probe = fisher.estimate(model, lay.all_names(), measured.probe_bits, q, base.sample,
                                measured.probe_batches, ctx.device, ctx.task.loss)
        ctx.log.info(f"estimated the sensitivity of {len(probe)} modules at {measured.probe_bits} bits")
    plan = {}
    if ctx.base_bits < 16:
        plan = quant.plan(lay.all_names(), ctx.masked, ctx.base_bits, q.high_bits)
        plan = quant.with_layer_bits(plan, {m: b for mask, b in q.layer_bits.items()
                                            for m in masks.resolve(mask, lay)})
    precision = None
    changing = changing_modules(ctx)
    if changing:  # QaLoF: widths that change after quantization; their full-precision weights are kept first
        from qlbench.cell.precision import Precision

        switch = settings.precision.switch_bits if ctx.base_bits < 16 else ()
        precision = Precision(model, changing, plan, settings, ctx.cell.seed, switched_modules(ctx),
                              adapter_widths=switch or None)
    backend = quant.backend(q.backend)
    loftq, kept = {}, {}
    if settings.lora.init == "loftq":  # the adapted modules' weights are set to the last round's target first
        kept = loftq_prepare(ctx, model, plan, backend)
    stats = backend.apply(model, plan, settings)
    if kept:
        loftq = loftq_finish(ctx, model, kept, stats, backend)
    for row in stats:  # the initial error ‖W − (Q + s·B·A)‖_F, and the default init's ‖W − Q(W)‖_F (B = 0)
        fitted = loftq.get(row["module"])
        plain = (row["quant_mse"] * row["numel"]) ** 0.5
        row["init_error"] = fitted["init_error"] if fitted else plain
        row["init_error_default"] = fitted["plain_error"] if fitted else plain
    ctx.log.info(f"quantized {len(plan)} modules ({q.backend} {q.format}), mask {ctx.cell.mask!r}")
    return Quantized(plan=plan, stats=stats, weight_mem_mb=memory.weight_mem_mb(model, stats), probe=probe,
                     precision=precision, loftq=loftq)


def loftq_prepare(ctx: Context, model, plan: dict[str, int], backend) -> dict:
    from qlbench.errors import QlbenchError
    from qlbench.quant import loftq
    from qlbench.study.targets import DEFAULT_TARGETS, resolve

    modules, slices = resolve(ctx.settings.lora.targets or DEFAULT_TARGETS[ctx.spec["arch"]], ctx.spec["arch"])
    if slices:
        raise QlbenchError("lora_init loftq: targets with Q/K/V slices are not supported (B's rows outside the "
                           "slices must stay zero); name whole modules")
    names = loftq.adapted(plan, modules)
    if not names:
        ctx.log.info("lora_init loftq: no quantized module is a LoRA target; the default init stands")
    return loftq.prepare(model, plan, names, ctx.cell.rank, ctx.settings.lora.loftq_iter, ctx.settings, backend)


def loftq_finish(ctx: Context, model, kept: dict, stats: list[dict], backend) -> dict:
    """The last round's SVD; the quantized modules' error rows measured against their full-precision weight (the
    backend measured against the last round's target)."""
    from qlbench.quant import loftq
    from qlbench.quant.stats import error_stats

    fitted = loftq.finish(model, kept, ctx.cell.rank, backend)
    for i, row in enumerate(stats):
        if row["module"] in fitted:
            f = fitted[row["module"]]
            own = {k: row[k] for k in row if k not in ("quant_mse", "quant_rel_err", "quant_snr_db",
                                                      "noise_var_uniform", "numel")}
            stats[i] = {**error_stats(row["module"], row["bits"], kept[row["module"]]["weight"], f["Q"]), **own}
    errors = [(f["init_error"], f["plain_error"]) for f in fitted.values()]
    ctx.log.info(f"loftq ({ctx.settings.lora.loftq_iter} rounds) on {len(fitted)} modules: initial error "
                 f"{sum(e for e, _ in errors):.4g} (default init {sum(p for _, p in errors):.4g}, summed)")
    return {n: {k: f[k] for k in ("L", "R", "init_error", "plain_error")} for n, f in fitted.items()}


def switched_modules(ctx: Context) -> list[str]:
    """The modules a width applies to (training's schedule, `eval_bits`): the mask's; for a 16-bit reference cell,
    whose mask is `none`, every module — its static PTQ quantizes the whole model, as QaLoF's."""
    return ctx.masked if ctx.masked else ctx.layout.all_names()


def changing_modules(ctx: Context) -> list[str]:
    """The modules whose width may change after quantization: the masked ones when training switches precision
    (switchable, CPT) or the trained model is evaluated at other widths, and every module a per-layer map or the
    layer-wise scan names. Empty for a cell of fixed precision."""
    from qlbench.study import masks

    p, lay = ctx.settings.precision, ctx.layout
    names: set[str] = set()
    if (p.trains_switching and ctx.base_bits < 16) or p.eval_bits:
        names |= set(switched_modules(ctx))
    for mapping in p.eval_maps.values():
        names |= {m for mask in mapping for m in masks.resolve(mask, lay)}
    if p.eval_scan:
        names |= set(lay.all_names())
    return sorted(names)
