"""Gradient variance across micro-batches: the arithmetic, the probe steps, and that probing leaves training alone."""

import math

import pytest
import torch

from qlbench.cell import gradstats
from qlbench.cell.loop import LoopSettings, train


def test_probe_steps_spread_over_training():
    assert gradstats.probe_steps(10, 3) == [0, 4, 9] or gradstats.probe_steps(10, 3) == [0, 5, 9]
    assert gradstats.probe_steps(10, 0) == []
    assert gradstats.probe_steps(10, 1) == [0]
    assert gradstats.probe_steps(3, 10) == [0, 1, 2]


def test_micro_batch_variance_by_hand():
    # two micro-batches: deviations from the mean are ±1 in each of 2 coordinates -> trace 4/(2-1), per coordinate 2
    total, per = gradstats.micro_batch_variance([[torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 4.0])]])
    assert total == pytest.approx(4.0) and per == pytest.approx(2.0)
    # three micro-batches, two tensors: the unbiased variance summed over every coordinate
    g = [[torch.tensor([0.0]), torch.tensor([[1.0, 0.0]])], [torch.tensor([3.0]), torch.tensor([[1.0, 0.0]])],
         [torch.tensor([6.0]), torch.tensor([[1.0, 3.0]])]]
    expect = torch.tensor([0.0, 3, 6]).var().item() + 0 + torch.tensor([0.0, 0, 3]).var().item()
    total, per = gradstats.micro_batch_variance(g)
    assert total == pytest.approx(expect) and per == pytest.approx(expect / 3)
    assert math.isnan(gradstats.micro_batch_variance([[torch.ones(2)]])[0])


def _tiny_lora_model(seed=0, dropout=0.1):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0))
    model.requires_grad_(False)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=["c_attn"], fan_in_fan_out=True)
    model = get_peft_model(model, cfg)
    for n, p in model.named_parameters():  # a non-zero B, so A gets gradients too
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _sampler(identical=False):
    data = torch.randint(0, 50, (32, 16), generator=torch.Generator().manual_seed(3))

    def sample(step):
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, 32, (3,), generator=g)
        return data[idx[:1].repeat(3)] if identical else data[idx]

    return sample


def _run(probe: bool, identical=False):
    model = _tiny_lora_model()
    sample = _sampler(identical)
    s = LoopSettings(steps=4, lr=1e-2)
    gv = gradstats.GradVariance(model, sample, gradstats.probe_steps(4, 2), torch.device("cpu"))
    torch.manual_seed(1)
    result = train(model, sample, s, device=torch.device("cpu"), on_step=gv if probe else None, log=lambda m: None)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, gv, weights


def test_probing_does_not_change_training():
    # dropout draws random numbers in every probe forward: the probe must restore the RNG and the gradients
    plain, _, w_plain = _run(probe=False)
    probed, gv, w_probed = _run(probe=True)
    assert [r["loss"] for r in plain.curve] == [r["loss"] for r in probed.curve]
    assert all(torch.equal(w_plain[n], w_probed[n]) for n in w_plain)
    assert [p["step"] for p in gv.points] == [0, 3]
    assert all(p["grad_var"] > 0 for p in gv.points)


def test_identical_micro_batches_have_no_variance_and_curve_gets_the_points():
    model = _tiny_lora_model(dropout=0.0)
    gv = gradstats.GradVariance(model, _sampler(identical=True), [0, 2], torch.device("cpu"))
    result = train(model, _sampler(identical=True), LoopSettings(steps=3, lr=1e-2), device=torch.device("cpu"),
                   on_step=gv, log=lambda m: None)
    assert len(gv.points) == 2 and all(p["grad_var"] < 1e-12 for p in gv.points)
    before = [r["step_time_s"] for r in result.curve]
    gv.merge_into(result.curve)
    assert [math.isnan(r["grad_var"]) for r in result.curve] == [False, True, False]
    assert result.curve[0]["step_time_s"] <= before[0] and result.curve[1]["step_time_s"] == before[1]
    cols = gv.row_columns()
    assert cols["grad_var_n"] == 2 and cols["grad_var_first"] == gv.points[0]["grad_var"]


def _wrapped(hook):
    """A step hook around the probe, as cluster.plant.with_kill makes one: it names what it wraps."""
    def outer(step):
        hook(step)

    outer.__wrapped__ = hook
    return outer


@pytest.mark.parametrize("wrap", [False, True])
def test_probe_points_survive_a_resume(tmp_path, wrap):
    """Stopped after step 3 (a checkpoint), then resumed with a fresh probe: the points of steps 0, 2 and 5 are all
    there and equal an uninterrupted run's, though the resumed run only took step 5's."""
    from qlbench.cell.loop import Interrupted

    def run(checkpoint, stop_after=None):
        model, sample = _tiny_lora_model(), _sampler()
        gv = gradstats.GradVariance(model, sample, [0, 2, 5], torch.device("cpu"))
        asked = []  # the loop asks after every finished step but the last

        def stop():
            asked.append(True)
            return len(asked) == stop_after

        torch.manual_seed(1)
        try:
            result = train(model, sample, LoopSettings(steps=6, lr=1e-2, checkpoint_every=2),
                           device=torch.device("cpu"), checkpoint=checkpoint, on_step=_wrapped(gv) if wrap else gv,
                           stop_requested=stop, log=lambda m: None)
        except Interrupted:
            return None, gv
        return result, gv

    ref, gv_ref = run(tmp_path / "ref.pt")
    _, gv_first = run(tmp_path / "ck.pt", stop_after=4)
    assert [p["step"] for p in gv_first.points] == [0, 2]
    resumed, gv_resumed = run(tmp_path / "ck.pt")
    assert resumed.resumed_from == 4
    assert [r["loss"] for r in resumed.curve] == [r["loss"] for r in ref.curve]
    strip = lambda points: [{k: v for k, v in p.items() if k != "probe_s"} for p in points]  # noqa: E731
    assert len(gv_ref.points) == 3 and strip(gv_resumed.points) == strip(gv_ref.points)
    assert gv_resumed.row_columns() == gv_ref.row_columns()


def test_gradient_variance_per_parameter_is_unchanged_when_a_layer_doubles_with_the_same_noise():
    # per-coordinate noise of variance 1 around a mean: a module of 6 coordinates and one of 12 (twice the
    # parameters, the same per-parameter noise). The sum doubles; the per-parameter variance does not.
    g = torch.Generator().manual_seed(0)
    k = 4000
    small = [[torch.randn(2, 3, generator=g), torch.randn(3, 0, generator=g)] for _ in range(k)]
    big = [[torch.randn(2, 6, generator=g), torch.randn(6, 0, generator=g)] for _ in range(k)]
    total_s, per_s = gradstats.micro_batch_variance(small)
    total_b, per_b = gradstats.micro_batch_variance(big)
    assert total_b / total_s == pytest.approx(2.0, rel=0.05)
    assert per_b == pytest.approx(per_s, rel=0.05) and per_s == pytest.approx(1.0, rel=0.05)
    names = ["m.a.lora_A.default.weight", "m.a.lora_B.default.weight", "m.b.lora_A.default.weight",
             "m.b.lora_B.default.weight"]
    both = [s + b for s, b in zip(small, big)]
    per_module = gradstats.per_module_variance(both, names)
    assert set(per_module) == {"m.a", "m.b"}
    assert per_module["m.b"] == pytest.approx(per_module["m.a"], rel=0.05)


def test_grad_var_scaling_uses_the_per_parameter_variance():
    # planted per-parameter excess ∝ r·2^(−2b); the summed variance also grows with the count r·(m+n)
    import numpy as np
    import polars as pl

    from qlbench.analysis import claims

    rng = np.random.default_rng(0)
    rows = []
    for r in (4, 8, 16, 32):
        count = r * (64 + 64)
        for seed in range(3):
            for b in (16, 2, 3, 4, 6):
                per = 1.0 + (0 if b == 16 else 50.0 * r * 2.0 ** (-2 * b) * math.exp(rng.normal(0, 0.05)))
                rows.append({"model": "m", "n_train": None, "train_examples": 1000, "status": "ok", "mask": "all",
                             "bits": b, "rank": r, "seed": seed, "eval_loss": 2.0, "grad_var_per_param_mean": per,
                             "grad_var_mean": per * count})
    slopes = {s["term"]: s for s in claims.grad_var_scaling(
        pl.DataFrame(rows, schema_overrides={"n_train": pl.Int64})).iter_rows(named=True)}
    assert slopes["log2_rank"]["measured_slope"] == pytest.approx(1.0, abs=0.05)  # the sum would give 2
    assert slopes["log2_rank"]["column"] == "grad_var_per_param_mean"
