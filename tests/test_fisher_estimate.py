"""The one-pass sensitivity estimate ½·Σ F·δ² (qlbench.cell.fisher) against a hand computation on a tiny model."""

import pytest
import torch

from qlbench.cell import fisher
from qlbench.study.settings import tree

SETTINGS = tree(format="int", symmetric=True, group_size=0, double_quant=False).quant


def test_one_pass_estimate_matches_a_hand_computation():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5, -0.25], [0.3, -0.6, 0.9]]))
    batches = {0: torch.tensor([1.0, 2.0, 3.0]), 1: torch.tensor([3.0, 0.0, 1.0])}

    def loss(m, x):  # L = Σ_i (W x)_i, so ∂L/∂W_ij = x_j for every row i
        return m(x).sum()

    rows = fisher.estimate(model, ["0"], 3, SETTINGS, lambda i: batches[i - fisher.PROBE_STEP0], 2, "cpu", loss)
    # Fisher diagonal: mean of squared gradients over the 2 batches: ((1² + 3²)/2, (2² + 0²)/2, (3² + 1²)/2)
    # = (5, 2, 5) in both rows. Int 3 bits per row, levels −3..3: row 0 has step 1/3, so 1, 0.5, −0.25 ->
    # 1, 2/3 (1.5 rounds to even, 2), −1/3: δ = (0, 1/6, −1/12); row 1 (step 0.3) is exact: δ = 0.
    by_hand = 0.5 * (2 * (1 / 6) ** 2 + 5 * (1 / 12) ** 2)
    assert rows[0]["estimate"] == pytest.approx(by_hand, rel=1e-6)
    assert rows[0]["fisher_trace"] == pytest.approx(2 * (5 + 2 + 5), rel=1e-6)
    assert rows[0]["noise_power"] == pytest.approx((1 / 6) ** 2 + (1 / 12) ** 2, rel=1e-5)
    assert rows[0]["numel"] == 6
