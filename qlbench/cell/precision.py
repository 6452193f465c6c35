"""Switchable precision (QaLoF): one base, one LoRA adapter per bit width of the masked layers.

Training switches the masked layers' width step by step — `cyclic` (4, 6, 8, 4, ...) or `random` — and trains the
adapter of the width in use. Evaluation runs each width with its own adapter, and random precision switching at
inference: every evaluation batch draws a width (and its adapter) at random.
"""

from __future__ import annotations

import random

import torch

from qlbench.quant.formats import quantize_module


def adapter_name(width: int, widths: list[int]) -> str:
    return "default" if width == widths[0] else f"b{width}"


class Switching:
    def __init__(self, model, masked: list[str], widths: list[int], settings: dict, seed: int):
        self.widths, self.schedule, self.seed = widths, settings["switch_schedule"], seed
        self.params = {n: model.get_submodule(n).weight for n in masked}  # the same Parameters after peft wraps
        self.bank = {w: {n: quantize_module(model.get_submodule(n), p, w, settings) for n, p in self.params.items()}
                     for w in widths}
        self.model, self.attached = model, False

    @torch.no_grad()
    def use(self, width: int) -> None:
        for name, p in self.params.items():
            p.copy_(self.bank[width][name])
        if self.attached:
            self.model.set_adapter(adapter_name(width, self.widths))
            for n, p in self.model.named_parameters():  # every adapter stays in the optimizer; unused ones get no grad
                if "lora_" in n:
                    p.requires_grad_(True)

    def attach(self, model):
        """After lora.attach made the first width's adapter: one more per width, initialised alike."""
        import copy

        torch_state = torch.get_rng_state()
        for width in self.widths[1:]:
            torch.set_rng_state(torch_state)  # the same initial A for every width
            model.add_adapter(adapter_name(width, self.widths), copy.deepcopy(model.peft_config["default"]))
        self.model, self.attached = model, True
        self.use(self.widths[0])
        return model

    def width_at(self, step: int) -> int:
        if self.schedule == "cyclic":
            return self.widths[step % len(self.widths)]
        return random.Random(self.seed * 1_000_003 + step).choice(self.widths)

    def before_step(self, step: int) -> None:
        self.use(self.width_at(step))

    def evaluate(self, eval_blocks, batch_size: int, loss_fn, final_width: int) -> dict:
        """eval_loss_b<w> for every width with its adapter, and eval_loss_random_switch (a width per batch)."""
        out = {}
        for width in self.widths:
            self.use(width)
            out[f"eval_loss_b{width}"] = loss_fn(eval_blocks)
        draw = random.Random(self.seed)
        total, count = 0.0, 0
        for i in range(0, eval_blocks.shape[0], batch_size):
            batch = eval_blocks[i : i + batch_size]
            self.use(draw.choice(self.widths))
            total += loss_fn(batch) * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        out["eval_loss_random_switch"] = total / count
        self.use(final_width)
        return out
