"""Stage 4: attach what trains and what changes the forward pass, once and in one place — LoRA (peft), quantized
adapters (`adapter_bits`), one adapter per width when precision switches, and the activation / KV-cache hooks,
installed around the LoRA wrappers so the adapter's path sees the same quantized activations as the base.

LoRA's B starts at zero, so the attached model still computes exactly what the quantized base computes — except
under `lora_init: loftq`, where A and B start at LoftQ's fit of what quantization took (`qlbench.quant.loftq`)."""

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
    model = lora.attach(base.model, ctx.cell.rank, settings, spec["arch"], ctx.task.PEFT_TASK, ctx.task.HEAD_MODULES)
    if quantized.loftq:  # LoftQ: scaling·B·A starts at what quantization took from the weight
        from qlbench.quant import loftq

        for name, fitted in quantized.loftq.items():
            loftq.set_adapter(model.get_submodule(f"base_model.model.{name}"), fitted["L"], fitted["R"])
    adapters.apply(model, settings.quant.adapter_bits)  # 16: off
    precision = quantized.precision
    if precision:
        model = precision.attach(model)  # switchable: one adapter per width, each layer on its width's
    if ctx.base_bits < 16 or precision:  # hooks read each layer's width as it runs: full precision is left alone
        hooked = sorted(set(quantized.plan) | set(precision.weights if precision else ()))
        activations.apply(model, hooked, settings.quant.act_bits, settings.quant.kv_bits, spec["arch"], spec["n_layer"],
                          widths=precision.width if precision else quantized.plan)
    return model
