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


def test_the_loops_foreach_update_is_torchs_per_tensor_update_bit_for_bit():
    """The loop asks for foreach AdamW and clipping (torch picks them only on a GPU); on a CPU they must give the
    per-tensor loop's numbers exactly, or every cell made before would differ."""
    torch.manual_seed(0)
    shapes = [(64, 8), (8, 64), (3,), (17, 5)]
    runs = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.randn(*s, generator=torch.Generator().manual_seed(i)))
                  for i, s in enumerate(shapes)]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        for step in range(6):
            for p in params:
                p.grad = 3 * torch.randn(p.shape, generator=g)
            opt.param_groups[0]["lr"] = 1e-2 * (6 - step) / 6
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=foreach)
            opt.step()
            opt.zero_grad(set_to_none=True)
        runs.append(torch.cat([p.detach().flatten() for p in params]))
    assert torch.equal(runs[0], runs[1])
    made = make_optimizer([torch.nn.Parameter(torch.zeros(2))], LoopSettings(steps=1, lr=1.0))
    assert made.defaults["foreach"] is True  # what the loop runs is the foreach path tested here


def _tiny_gpt2():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    base.requires_grad_(False)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))


def test_a_compiled_step_follows_the_eager_one_and_its_first_step_carries_the_compilation():
    """`compile: default` runs the step through torch.compile (inductor): losses within float32 rounding of eager's
    (the kernels are fused, so not bit for bit), and the first step is the slow one."""
    from qlbench.cell.measure import compile_s, step_time_s

    batch = (torch.arange(16) * 3 % 64).repeat(4, 1)  # a pattern LoRA learns within a few steps
    curves = {}
    for mode in ("off", "default"):
        torch._dynamo.reset()
        result = train(_tiny_gpt2(), lambda step: batch, LoopSettings(steps=12, lr=3e-2, compile=mode),
                       device=torch.device("cpu"), log=lambda m: None)
        curves[mode] = result.curve
    eager, comp = ([r["loss"] for r in curves[m]] for m in ("off", "default"))
    assert max(abs(a - b) for a, b in zip(eager, comp)) < 1e-4
    assert eager[-1] < eager[0] - 0.05  # it trained: the comparison is of a moving loss
    assert compile_s(curves["default"]) > 10 * step_time_s(curves["default"])  # compiling costs many steps
    assert compile_s(curves["default"]) > 5 * compile_s(curves["off"])
