"""The one-pass sensitivity estimates (qlbench.cell.fisher) against hand computations on tiny models."""

import pytest
import torch

from qlbench.cell import fisher
from qlbench.study.settings import tree

SETTINGS = tree(format="int", symmetric=True, group_size=0, double_quant=False).quant


def _linear():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5, -0.25], [0.3, -0.6, 0.9]]))
    return model


def test_the_empirical_fisher_is_the_mean_squared_per_example_gradient():
    model = _linear()
    batches = {0: torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])}  # one batch of two examples

    def loss(m, x):  # the batch-mean of L_i = Σ_k (W x_i)_k, so ∂L_i/∂W_kj = x_ij for every row k
        return m(x).sum(dim=-1).mean()

    rows = fisher.estimate(model, ["0"], 3, SETTINGS, lambda i: batches[i - fisher.PROBE_STEP0], 1, "cpu", loss,
                           hutchinson_samples=1)
    # E_i[g_i²] over the 2 examples: ((1² + 3²)/2, (2² + 0²)/2, (3² + 1²)/2) = (5, 2, 5) in both rows. (The
    # square of the batch-mean gradient would be ((1+3)/2)², ... = (4, 1, 4).) Int 3 bits per row, levels −3..3:
    # row 0 has step 1/3, so 1, 0.5, −0.25 -> 1, 2/3 (1.5 rounds to even, 2), −1/3: δ = (0, 1/6, −1/12); row 1
    # (step 0.3) is exact: δ = 0.
    by_hand = 0.5 * (2 * (1 / 6) ** 2 + 5 * (1 / 12) ** 2)
    assert rows[0]["estimate"] == pytest.approx(by_hand, rel=1e-6)
    assert rows[0]["fisher_trace"] == pytest.approx(2 * (5 + 2 + 5), rel=1e-6)
    assert rows[0]["noise_power"] == pytest.approx((1 / 6) ** 2 + (1 / 12) ** 2, rel=1e-5)
    assert rows[0]["numel"] == 6 and rows[0]["fisher_examples"] == 2
    # the loss is linear in W: its Hessian is 0
    assert rows[0]["hessian_trace"] == pytest.approx(0.0, abs=1e-12)


def test_the_hutchinson_trace_equals_the_exact_trace_of_a_small_quadratic():
    model = _linear()
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])

    def diagonal(m, x):  # Σ_kj a_j·W_kj², a = Σ_i x_i: H = diag(2a) per row, trace 2·2·Σ a = 4·(4 + 2 + 4)
        return (x.sum(dim=0) * m[0].weight ** 2).sum()

    tr = fisher.hessian_traces(model, [model[0].weight], lambda i: x, 1, "cpu", diagonal, samples=3)
    assert tr[0] == pytest.approx(40.0, rel=1e-6)  # a diagonal Hessian: every Rademacher sample is exact

    def quadratic(m, x):  # ½·Σ_i ‖W x_i‖²: H = I_rows ⊗ Σ_i x_i x_iᵀ, trace = 2·Σ_i ‖x_i‖² = 2·(14 + 10)
        return 0.5 * (m(x) ** 2).sum()

    tr = fisher.hessian_traces(model, [model[0].weight], lambda i: x, 1, "cpu", quadratic, samples=4000)
    assert tr[0] == pytest.approx(48.0, rel=0.05)


def test_the_probe_rows_carry_both_estimates_on_a_real_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()  # eval: SDPA picks its fused kernel, which has no 2nd derivative
    data = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    rows = fisher.estimate(model, ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"], 4, SETTINGS,
                           lambda i: data, 1, "cpu", hutchinson_samples=2)
    for r in rows:
        assert r["fisher_examples"] == 3 and r["hutchinson_samples"] == 2
        assert r["estimate"] > 0 and r["hessian_estimate"] == pytest.approx(
            0.5 * r["hessian_trace"] / r["numel"] * r["noise_power"])
