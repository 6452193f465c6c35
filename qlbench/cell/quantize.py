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
    stats = quant.backend(q.backend).apply(model, plan, settings)
    ctx.log.info(f"quantized {len(plan)} modules ({q.backend} {q.format}), mask {ctx.cell.mask!r}")
    return Quantized(plan=plan, stats=stats, weight_mem_mb=memory.weight_mem_mb(model, stats), probe=probe,
                     precision=precision)


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
