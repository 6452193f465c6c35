"""Stage 4: attach what trains and what changes the forward pass, once and in one place — LoRA (peft), quantized
adapters (`adapter_bits`), one adapter per width when precision switches, and the activation / KV-cache hooks,
installed around the LoRA wrappers so the adapter's path sees the same quantized activations as the base.

LoRA's B starts at zero, so the attached model still computes exactly what the quantized base computes."""

from __future__ import annotations

from qlbench.cell.context import Context
from qlbench.cell.load import Base
from qlbench.cell.quantize import Quantized


def attach(ctx: Context, base: Base, quantized: Quantized):
    import torch

    from qlbench.cell import lora
    from qlbench.quant import activations, adapters

    settings, spec = ctx.settings, ctx.spec
    torch.manual_seed(ctx.cell.seed)  # the same LoRA init for every bit width of a seed
    model = lora.attach(base.model, ctx.cell.rank, settings, spec["arch"])
    adapters.apply(model, settings["adapter_bits"])  # 16: off
    if quantized.switching:
        model = quantized.switching.attach(model)
        quantized.switching.use(ctx.cell.bits)  # the cell's own width until training switches it
    if ctx.base_bits < 16:
        activations.apply(model, list(quantized.plan), settings["act_bits"], settings["kv_bits"], spec["arch"],
                          spec["n_layer"])
    return model
