"""Precision that changes after quantization (QaLoF): the widths of the base's layers, set layer by layer.

One `Precision` holds the full-precision weights of the modules whose width may change and the width of every
quantized module now (the activation hooks read it: `act_bits: follow`). Three ways to use it:

- **switchable** (`switch_bits`): one LoRA adapter per width on each layer; a layer computes with its width's
  quantized weights and its width's adapter. Training switches the masked layers' width step by step (`cyclic`:
  4, 6, 8, 4, ...; `random`), or trains each width's adapter in turn for the full steps (`sequential`, QaLoF's;
  `qlbench.cell.sequential`).
- **CPT** (`cpt_bits: [low, high]`, cyclic precision training, Fu et al. 2021): one adapter; the masked layers'
  width follows a cyclic schedule between the bounds, `cpt_cycles` periods over the run.
- **evaluation without retraining**, for any trained cell: each width of `eval_bits`, named per-layer maps
  (`eval_maps`, QaLoF's hybrid), the layer-wise scan (`eval_scan`: all at `rest`, one block or module at `bits`),
  and random precision inference (a width drawn per forward pass).
"""

from __future__ import annotations

import random

import torch

from qlbench.quant.formats import quantize_module
from qlbench.study.schedules import cpt_period, cpt_width

PEFT_PREFIX = "base_model.model."


def adapter_name(width: int, widths: list[int]) -> str:
    return "default" if width == widths[0] else f"b{width}"


class Precision:
    def __init__(self, model, modules: list[str], widths: dict[str, int], settings, seed: int,
                 masked: list[str], adapter_widths: tuple[int, ...] | None = None):
        """`modules`: those whose width may change, taken now, before any is quantized; `widths`: every module's
        width in the plan (16: full precision); `settings`: the cell's settings tree (its format and schedule);
        `masked`: the modules training switches."""
        self.settings, self.seed, self.masked = settings, seed, list(masked)
        self.modules = {n: model.get_submodule(n) for n in modules}  # the same modules (and Parameters) after peft wraps
        self.weights = {n: m.weight for n, m in self.modules.items()}
        self.pristine = {n: w.detach().clone() for n, w in self.weights.items()}
        self.width = {n: b for n, b in widths.items() if b < 16}  # every quantized module's width now
        self.adapter_widths = adapter_widths  # switchable: one adapter per width; None: one adapter for all
        self.model, self.layers = model, {}  # after attach: the peft model, and base module name -> its LoRA layer
        self.only: str | None = None  # sequential training: the one adapter that trains (None: every adapter)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    # -- setting widths ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def set(self, widths: dict[str, int]) -> None:
        """Give these modules these widths (16: full precision); each LoRA layer then uses its width's adapter."""
        for name, width in widths.items():
            if self.width.get(name, 16) == width:
                continue
            self.weights[name].copy_(self.pristine[name] if width >= 16 else self._quantized(name, width))
            if width >= 16:
                self.width.pop(name, None)
            else:
                self.width[name] = width
        self._select_adapters()

    def uniform(self, width: int) -> dict[str, int]:
        return {n: width for n in self.masked}

    def _quantized(self, name: str, width: int) -> torch.Tensor:
        key = (name, width)
        if key not in self._cache:
            self._cache[key] = quantize_module(self.modules[name], self.pristine[name], width, self.settings.quant)
        return self._cache[key]

    def _select_adapters(self) -> None:
        if not self.adapter_widths or not self.layers:
            return
        for name, layer in self.layers.items():
            width = self.width.get(name, 16)
            chosen = width if width in self.adapter_widths else self.adapter_widths[0]
            layer.set_adapter(adapter_name(chosen, self.adapter_widths))
        for n, p in self.model.named_parameters():  # every adapter stays in the optimizer; unused ones get no grad
            if "lora_" in n:
                p.requires_grad_(self.only is None or f".{self.only}." in n)

    # -- attaching --------------------------------------------------------------------------------------------------
    def attach(self, model):
        """After lora.attach made the first adapter: for switchable precision one more per width, initialised
        alike; then every LoRA layer is found by its base module's name."""
        import copy

        if self.adapter_widths:
            state = torch.get_rng_state()
            for width in self.adapter_widths[1:]:
                torch.set_rng_state(state)  # the same initial A for every width
                model.add_adapter(adapter_name(width, self.adapter_widths), copy.deepcopy(model.peft_config["default"]))
        self.model = model
        self.layers = {n.removeprefix(PEFT_PREFIX): m for n, m in model.named_modules()
                       if hasattr(m, "lora_A") and hasattr(m, "set_adapter")}
        self._select_adapters()
        return model

    # -- training ---------------------------------------------------------------------------------------------------
    def width_at(self, step: int) -> int:
        p = self.settings.precision
        if p.cpt_bits:
            low, high = p.cpt_bits
            return cpt_width(step, low, high, cpt_period(self.settings.train.steps, p.cpt_cycles), p.cpt_schedule)
        widths = p.switch_bits
        if p.switch_schedule == "cyclic":
            return widths[step % len(widths)]
        return random.Random(self.seed * 1_000_003 + step).choice(widths)

    def before_step(self, step: int) -> None:
        self.set(self.uniform(self.width_at(step)))

    # -- evaluation -------------------------------------------------------------------------------------------------
    def random_inference(self, widths: list[int], seed: int):
        """A forward pre-hook on the model that draws the masked layers' width (and adapters) for every forward
        pass from `widths`; returns (handle, the list of widths drawn, in order)."""
        draw, drawn = random.Random(seed), []

        def hook(module, args, kwargs):
            width = draw.choice(widths)
            drawn.append(width)
            self.set(self.uniform(width))

        return self.model.register_forward_pre_hook(hook, with_kwargs=True), drawn
