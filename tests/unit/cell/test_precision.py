"""Switchable precision (QaLoF) through a real cell: one adapter per width, cyclic training, random switching."""

import subprocess

import pytest

import polars as pl

from conftest import BIN, CONFIG_ARGS


def run_cell(workdir, *sets):
    args = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model", "micro-gpt2",
            "--bits", "4", "--rank", "4", "--mask", "all", "--seed", "0", "--out", workdir / "cell",
            "--set", "steps=12"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return pl.read_parquet(workdir / "cell/row.parquet").row(0, named=True)


def test_switchable_precision_evaluates_every_width_and_random_switching(workdir):
    row = run_cell(workdir, "switch_bits=[2,4,8]")
    widths = [row[f"eval_loss_b{w}"] for w in (2, 4, 8)]
    assert row["eval_loss"] == row["eval_loss_b4"]  # the cell's own width, with its own adapter
    assert widths[0] > widths[1] and widths[0] > widths[2]  # 2 bits is the worst width
    assert min(widths) <= row["eval_loss_random_switch"] <= max(widths)
    assert row["trainable_params"] == 3 * run_cell(workdir)["trainable_params"]  # three adapters


def test_a_width_outside_switch_bits_is_refused(workdir):
    args = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model", "micro-gpt2",
            "--bits", "4", "--rank", "4", "--out", workdir / "x", "--set", "switch_bits=[6,8]"]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert done.returncode != 0 and "switch_bits" in done.stderr


def tiny_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    model.requires_grad_(False)
    return model


MASKED = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "mlp.c_fc")]


def switchable(model, widths, settings, seed=3):
    from qlbench.cell import lora
    from qlbench.cell.precision import Precision

    precision = Precision(model, MASKED, {n: widths[0] for n in MASKED}, settings, seed, MASKED, adapter_widths=widths)
    from qlbench.quant import fake

    fake.apply(model, {n: widths[0] for n in MASKED}, settings)  # what the quantize stage does after keeping weights
    return precision, precision.attach(lora.attach(model, 4, settings, "gpt2"))


def test_each_width_trains_its_own_adapter_and_random_switching_follows_its_draws():
    """In one process on a tiny GPT-2: the cyclic schedule trains every width's adapter (B leaves zero), the
    adapters differ, each width computes with its own base weights; random precision inference draws a width per
    forward pass (random.Random(seed)), and its loss is the token-weighted mean of each batch's loss at its width."""
    import random

    import torch

    from qlbench.cell.loop import LoopSettings, train
    from qlbench.cell.precision import adapter_name
    from qlbench.quant.formats import quantize_module
    from qlbench.study.settings import tree
    from qlbench.tasks import causal_lm

    model = tiny_gpt2()
    widths = [2, 4, 8]
    settings = tree(targets=["c_attn"], switch_bits=widths, steps=9)
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in MASKED}
    sw, model = switchable(model, widths, settings)
    data = torch.randint(0, 64, (40, 16))
    train(model, causal_lm.batch_sampler(data, 4, 0), LoopSettings(steps=9, lr=1e-2, warmup=0.0),
          device=torch.device("cpu"), before_step=sw.before_step, log=lambda m: None)
    b = {w: torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                       if f"lora_B.{adapter_name(w, widths)}." in n]) for w in widths}
    assert all(b[w].abs().sum() > 0 for w in widths)  # every width's adapter trained (B starts at zero)
    assert not torch.equal(b[2], b[4]) and not torch.equal(b[4], b[8])
    for w in widths:
        sw.set(sw.uniform(w))
        for n in MASKED:
            module = model.base_model.model.get_submodule(n)
            module = getattr(module, "base_layer", module)  # the Conv1D under a LoRA wrapper
            assert torch.equal(module.weight, quantize_module(module, originals[n], w, settings.quant))

    eval_blocks = data[:10]
    loss_of = lambda blocks: causal_lm.eval_loss(model, blocks, 4, torch.device("cpu"))  # noqa: E731
    per_width = {}
    for w in widths:
        sw.set(sw.uniform(w))
        per_width[w] = [loss_of(eval_blocks[i : i + 4]) for i in range(0, 10, 4)]
    handle, drawn = sw.random_inference(widths, seed=3)
    random_loss = loss_of(eval_blocks)
    handle.remove()
    draw = random.Random(3)
    assert drawn == [draw.choice(widths) for _ in range(3)]  # one draw per forward pass
    assert len(set(drawn)) > 1  # these draws switch: a model that never switched could not match
    sizes = [eval_blocks[i : i + 4, 1:].numel() for i in range(0, 10, 4)]
    expected = sum(per_width[w][k] * n for k, (w, n) in enumerate(zip(drawn, sizes))) / sum(sizes)
    assert random_loss == pytest.approx(expected, rel=1e-12)


def test_a_per_layer_map_selects_each_layers_adapter_and_equals_a_hand_built_model():
    """One layer switched to 4 bits changes the output; the switched model equals, to the bit, a plain model built
    by hand with that layer's 4-bit weights and its 4-bit adapter merged in, the others at 8 bits with theirs."""
    import torch

    from qlbench.cell.precision import adapter_name
    from qlbench.quant.formats import quantize_module
    from qlbench.study.settings import tree

    widths = [8, 4]
    settings = tree(targets=["c_attn", "c_fc"], switch_bits=widths)
    plain = tiny_gpt2()
    originals = {n: plain.get_submodule(n).weight.detach().clone() for n in MASKED}
    sw, model = switchable(tiny_gpt2(), widths, settings)
    with torch.no_grad():  # distinct, non-zero adapters per width
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randint(0, 64, (2, 16))
    model.eval()
    sw.set(sw.uniform(8))
    all8 = model(x).logits
    one = "transformer.h.1.mlp.c_fc"
    sw.set({**sw.uniform(8), one: 4})
    switched = model(x).logits
    assert not torch.allclose(all8, switched)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert layers[one].active_adapter == [adapter_name(4, widths)]
    assert layers["transformer.h.0.mlp.c_fc"].active_adapter == [adapter_name(8, widths)]
    scale = 2.0  # lora_alpha 2r: alpha / r
    for n in MASKED:  # by hand: W_q(width) + scale * (B A)^T (Conv1D stores (in, out))
        width = 4 if n == one else 8
        module = plain.get_submodule(n)
        layer = layers[n]
        name = adapter_name(width, widths)
        delta = (layer.lora_B[name].weight @ layer.lora_A[name].weight).T * scale
        with torch.no_grad():
            module.weight.copy_(quantize_module(module, originals[n], width, settings.quant) + delta)
    torch.testing.assert_close(plain.eval()(x).logits, switched, rtol=0, atol=1e-5)


def test_cpt_visits_every_width_with_its_period_and_trains_one_shared_adapter():
    import torch

    from qlbench.cell import lora
    from qlbench.cell.loop import LoopSettings, train
    from qlbench.cell.precision import Precision
    from qlbench.study.settings import tree
    from qlbench.study.schedules import cpt_period, cpt_width
    from qlbench.tasks import causal_lm

    period = cpt_period(64, 4)
    assert period == 16
    cycle = [cpt_width(t, 4, 8, period) for t in range(period)]
    assert cycle[0] == 4 and set(cycle) == {4, 5, 6, 7, 8} and cycle == sorted(cycle)  # rises low -> high
    assert [cpt_width(t, 4, 8, period) for t in range(period, 2 * period)] == cycle  # and again, each period
    tri = [cpt_width(t, 4, 8, period, "triangular") for t in range(period)]
    assert tri[0] == 4 and max(tri) == 8 and tri[period // 2] == 8 and tri[-1] < 8  # up, then back down

    settings = tree(targets=["c_attn"], cpt_bits=[4, 8], cpt_cycles=4, steps=64)
    model = tiny_gpt2()
    precision = Precision(model, MASKED, {n: 4 for n in MASKED}, settings, 0, MASKED)
    model = precision.attach(lora.attach(model, 4, settings, "gpt2"))
    assert list(model.peft_config) == ["default"]  # one adapter for every width
    seen = []
    data = torch.randint(0, 64, (40, 16))

    def before(step):
        precision.before_step(step)
        seen.append(dict(precision.width))

    train(model, causal_lm.batch_sampler(data, 4, 0), LoopSettings(steps=20, lr=1e-2, warmup=0.0),
          device=torch.device("cpu"), before_step=before, log=lambda m: None)
    assert [s[MASKED[0]] for s in seen] == [cpt_width(t, 4, 8, 16) for t in range(20)]
    assert all(len(set(s.values())) == 1 for s in seen)  # every masked layer at the step's width


def test_follow_quantizes_each_layers_input_at_its_own_width_in_switch_mode_too():
    import torch

    from qlbench.quant import activations
    from qlbench.study.settings import tree

    widths = [8, 3]
    settings = tree(targets=["c_attn"], switch_bits=widths)
    sw, model = switchable(tiny_gpt2(), widths, settings)
    model.eval()  # no dropout: two passes must be comparable
    handles = activations.apply(model, MASKED, "follow", 16, "gpt2", 2, widths=sw.width)
    seen = {}
    for n in MASKED:  # registered after ours: sees the quantized input
        model.base_model.model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
    x = torch.randint(0, 64, (2, 16))

    def levels(t):
        return max(len(torch.unique(tok)) for tok in t.reshape(-1, t.shape[-1]))

    sw.set({**sw.uniform(8), "transformer.h.1.mlp.c_fc": 3})
    model(x)
    assert levels(seen["transformer.h.1.mlp.c_fc"]) <= 2**3 - 1  # 3 bits: -3..3
    assert levels(seen["transformer.h.0.mlp.c_fc"]) > 2**3 - 1  # 8 bits: finer
    sw.set(sw.uniform(3))
    model(x)
    assert all(levels(seen[n]) <= 7 for n in MASKED)
    sw.set({n: 16 for n in MASKED})  # full precision: inputs left alone
    model(x)
    hooked = dict(seen)
    for h in handles:
        h.remove()
    model(x)
    assert all(torch.equal(hooked[n], seen[n]) for n in MASKED)


def test_a_named_map_runs_its_layers_at_their_width_and_every_other_at_high_bits():
    """QaLoF's hybrid on a switchable model trained at all-4 (high_bits 8): the listed layers at 4, the rest at 8 —
    not the rest at the cell's own 4 (which made the hybrid all-4). Each config's score sees the widths in force."""
    import logging
    from types import SimpleNamespace

    from qlbench.cell.evaluate import at_other_widths
    from qlbench.study.masks import layout

    lay = layout("gpt2", 2)
    names = lay.all_names()

    class Widths:  # the part of Precision that at_other_widths drives
        weights = dict.fromkeys(names)
        masked = names
        width = dict.fromkeys(names, 4)

        def set(self, widths):
            self.width.update(widths)

        def uniform(self, w):
            return dict.fromkeys(self.masked, w)

    precision = Widths()
    from qlbench.study.settings import tree

    settings = tree(eval_maps={"hybrid": {"b0.attn.c_proj+b1": 4}}, high_bits=8)  # no uniform widths: the map alone
    ctx = SimpleNamespace(settings=settings, layout=lay, cell=SimpleNamespace(seed=0), log=logging.getLogger("t"))
    quantized = SimpleNamespace(precision=precision, plan=dict.fromkeys(names, 4))
    seen = {}
    columns = at_other_widths(ctx, quantized, lambda: seen.setdefault("hybrid", dict(precision.width)) and {"em": 1.0})
    assert "eval_em_hybrid" in columns
    at_4 = {n for n, b in seen["hybrid"].items() if b == 4}
    assert at_4 == {lay.name(0, "attn.c_proj"), *(lay.name(1, m) for m in lay.modules)}, seen["hybrid"]
    assert {b for n, b in seen["hybrid"].items() if n not in at_4} == {8}
    assert set(precision.width.values()) == {4}  # the cell's own widths come back
