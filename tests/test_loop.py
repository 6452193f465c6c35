"""The training loop against known answers: its learning-rate schedule by hand, divergence stopping before the
update, and bitsandbytes' paged optimizers against torch's AdamW (they fall back to plain state on a CPU)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from qlbench.cell.loop import LoopSettings, lr_at, make_optimizer, train


def test_lr_warms_up_linearly_then_follows_a_cosine_to_a_tenth():
    s = LoopSettings(steps=10, lr=1.0, warmup=0.2, final_lr=0.1)  # warm-up: int(0.2 * 10) = 2 steps
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) for k in range(2, 10)]
    assert [lr_at(k, s) for k in range(10)] == pytest.approx(expected, abs=1e-15)
    assert lr_at(2, s) == 1.0 and lr_at(6, s) == pytest.approx(0.55)  # the top, and halfway down the cosine
    assert lr_at(0, LoopSettings(steps=10, lr=2.0, warmup=0.0)) == 2.0  # at least one warm-up step: lr itself


class Tiny(torch.nn.Module):
    """A model with the loop's interface: `model(input_ids=x, labels=x).loss`."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, input_ids, labels):
        return type("Out", (), {"loss": ((self.w * input_ids.float()).sum(-1) - 1).pow(2).mean()})()


def test_a_diverged_step_is_recorded_and_never_applied():
    torch.manual_seed(0)
    model = Tiny()
    data = torch.randn(16, 4)
    calls, seen = [], {}

    def exploding(m, x):  # step 3's loss is 100x the first: diverged (limit: 4x)
        calls.append(1)
        loss = m(input_ids=x, labels=x).loss
        return loss * 100 if len(calls) == 4 else loss

    def before(step):
        seen[step] = model.w.detach().clone()

    result = train(model, lambda step: data[step : step + 4], LoopSettings(steps=8, lr=0.1, warmup=0.0),
                   device=torch.device("cpu"), loss=exploding, before_step=before, log=lambda m: None)
    assert result.status == "diverged" and [r["step"] for r in result.curve] == [0, 1, 2, 3]
    assert math.isnan(result.curve[-1]["grad_norm"]) and not math.isnan(result.curve[-2]["grad_norm"])
    assert torch.equal(model.w.detach(), seen[3])  # the weights as they were before the diverged step
    assert not torch.equal(seen[3], seen[0])  # the steps before it did update


@pytest.mark.parametrize("name,tolerance", [("paged_adamw", 1e-6), ("paged_adamw_8bit", 5e-2)])
def test_paged_optimizers_follow_adamw(name, tolerance):
    torch.manual_seed(0)
    start = torch.randn(512, 64)  # 8-bit state needs at least 4096 values to be quantized blockwise
    grads = [torch.randn(512, 64) for _ in range(5)]
    final = {}
    for opt_name in ("adamw", name):
        p = torch.nn.Parameter(start.clone())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "paged optimizers are not supported on CPU": plain state then
            opt = make_optimizer([p], LoopSettings(steps=5, lr=1e-2, weight_decay=0.01, optimizer=opt_name))
            for g in grads:
                p.grad = g.clone()
                opt.step()
        final[opt_name] = p.detach()
    moved = (final["adamw"] - start).abs().mean()
    assert moved > 1e-2  # five steps of lr 1e-2 moved the weights
    assert (final[name] - final["adamw"]).abs().max() <= tolerance * max(1.0, 10 * moved.item())
    if name.endswith("8bit"):
        assert not torch.equal(final[name], final["adamw"])  # 8-bit state is not 32-bit state
