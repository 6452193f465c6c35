"""Switchable precision (QaLoF) through a real cell: one adapter per width, cyclic training, random switching."""

import subprocess

import pytest

import polars as pl

from conftest import BIN, REPO


def run_cell(workdir, *sets):
    args = [BIN / "qlbench", "run", "-c", REPO / "config.yaml", "--study", "micro", "--model", "micro-gpt2",
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
    args = [BIN / "qlbench", "run", "-c", REPO / "config.yaml", "--study", "micro", "--model", "micro-gpt2",
            "--bits", "4", "--rank", "4", "--out", workdir / "x", "--set", "switch_bits=[6,8]"]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert done.returncode != 0 and "switch_bits" in done.stderr


def test_each_width_trains_its_own_adapter_and_random_switching_follows_its_draws():
    """In one process on a tiny GPT-2: the cyclic schedule trains every width's adapter (B leaves zero), the
    adapters differ, each width computes with its own base weights; the random-switch loss equals the token-weighted
    mean of each batch's loss at the width drawn for it (random.Random(seed), one draw per batch)."""
    import random

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from qlbench.cell import lora
    from qlbench.cell.loop import LoopSettings, train
    from qlbench.cell.precision import Switching, adapter_name
    from qlbench.quant.formats import quantize_module
    from qlbench.study.config import DEFAULTS
    from qlbench.tasks import causal_lm

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    model.requires_grad_(False)
    masked = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "mlp.c_fc")]
    widths, settings = [2, 4, 8], {**DEFAULTS, "targets": ["c_attn"]}
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in masked}
    sw = Switching(model, masked, widths, settings, seed=3)
    model = sw.attach(lora.attach(model, 4, settings, "gpt2"))
    data = torch.randint(0, 64, (40, 16))
    train(model, causal_lm.batch_sampler(data, 4, 0), LoopSettings(steps=9, lr=1e-2, warmup=0.0),
          device=torch.device("cpu"), before_step=sw.before_step, log=lambda m: None)
    b = {w: torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                       if f"lora_B.{adapter_name(w, widths)}." in n]) for w in widths}
    assert all(b[w].abs().sum() > 0 for w in widths)  # every width's adapter trained (B starts at zero)
    assert not torch.equal(b[2], b[4]) and not torch.equal(b[4], b[8])
    for w in widths:
        sw.use(w)
        for n in masked:
            module = model.base_model.model.get_submodule(n)
            module = getattr(module, "base_layer", module)  # the Conv1D under a LoRA wrapper
            assert torch.equal(module.weight, quantize_module(module, originals[n], w, settings))

    eval_blocks = data[:10]
    loss_of = lambda blocks: causal_lm.eval_loss(model, blocks, 4, torch.device("cpu"))  # noqa: E731
    per_width = {}
    for w in widths:
        sw.use(w)
        per_width[w] = [loss_of(eval_blocks[i : i + 4]) for i in range(0, 10, 4)]
    out = sw.evaluate(eval_blocks, 4, loss_of, final_width=4)
    draw = random.Random(3)
    drawn = [draw.choice(widths) for _ in range(3)]
    assert len(set(drawn)) > 1  # these draws switch: a model that never switched could not match
    sizes = [eval_blocks[i : i + 4, 1:].numel() for i in range(0, 10, 4)]
    expected = sum(per_width[w][k] * n for k, (w, n) in enumerate(zip(drawn, sizes))) / sum(sizes)
    assert out["eval_loss_random_switch"] == pytest.approx(expected, rel=1e-12)
    assert {out[f"eval_loss_b{w}"] for w in widths} == {loss_of(eval_blocks) for w in widths for _ in [sw.use(w)]}
