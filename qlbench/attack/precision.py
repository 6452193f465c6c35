"""Random precision inference (QaLoF, after Double-Win Quant): every forward pass of the model draws a width from
a set and runs with the weights quantized at that width.

The quantized weights of every width are made once (a bank, as `qlbench.cell.precision.Switching` keeps for
training); a forward pre-hook on the whole model draws the width and points each quantized module's weight at that
width's tensor, so a switch costs no copy. `history` records the width of every forward pass.
"""

from __future__ import annotations

import random

import torch

from qlbench.quant.formats import quantize_module


class RandomPrecision:
    def __init__(self, model, names: list[str], widths: list[int], settings: dict, seed: int):
        self.model, self.widths = model, list(widths)
        self.modules = {n: model.get_submodule(n) for n in names}
        with torch.no_grad():
            self.bank = {w: {n: quantize_module(m, m.weight, w, settings) for n, m in self.modules.items()}
                         for w in self.widths}
        self.rng = random.Random(seed)
        self.history: list[int] = []
        self.handle = model.register_forward_pre_hook(self._draw)

    def use(self, width: int) -> None:
        for name, module in self.modules.items():
            module.weight.data = self.bank[width][name]

    def _draw(self, module, args):
        width = self.rng.choice(self.widths)
        self.use(width)
        self.history.append(width)

    def remove(self) -> None:
        self.handle.remove()
