import pytest
import torch

from qlbench.quant import formats, plan
from qlbench.quant.fake import apply
from qlbench.study.settings import tree


def _weights(seed=0, shape=(64, 256)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["int", "nf"])
def test_error_falls_as_bits_grow(fmt):
    w = _weights()
    errors = [(formats.quantize(w, b, fmt) - w).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 100


def test_nf4_code_table_is_bitsandbytes():
    bnb_utils = pytest.importorskip("bitsandbytes.backends.utils")
    assert torch.equal(formats.nf_code(4), bnb_utils._get_4bit_code("nf4", "cpu"))


def _equal_area(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal probabilities at the code's positive and negative values, scaled back by the outermost quantile."""
    top = torch.special.ndtri(torch.tensor(formats.NF_OFFSET, dtype=torch.float64))
    c = code.double()
    return torch.special.ndtr(c[c > 0] * top), torch.special.ndtr(-c[c < 0] * top).flip(0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_nf_codes_are_equal_area_quantiles_of_a_normal(bits):
    """QLoRA's normal float: 2^(b-1) positive values at equally spaced probabilities from 1/2 (excluded) to the
    offset, 2^(b-1) - 1 negative ones likewise, and an exact zero; the largest magnitude is 1."""
    code = formats.nf_code(bits)
    half = 2 ** (bits - 1)
    assert len(code) == 2**bits and torch.all(code[1:] > code[:-1])
    assert code.min() == -1 and code.max() == 1 and (code == 0).sum() == 1
    pos, neg = _equal_area(code)
    assert torch.allclose(pos, torch.linspace(0.5, formats.NF_OFFSET, half + 1, dtype=torch.float64)[1:], atol=1e-6)
    assert torch.allclose(neg, torch.linspace(0.5, formats.NF_OFFSET, half, dtype=torch.float64)[1:], atol=1e-6)


def test_int_scales_are_per_output_channel():
    w = _weights(1, (8, 64))
    w[3] *= 100  # one loud channel must not coarsen the others
    q = formats.quantize_int(w, 4)
    quiet = formats.quantize_int(_weights(1, (8, 64)), 4)
    for row in (0, 1, 2, 4, 5, 6, 7):
        assert torch.equal(q[row], quiet[row])
    # symmetric: each row's largest magnitude is represented exactly, and there are at most 2^b - 1 levels
    assert torch.allclose(q.abs().amax(dim=1), w.abs().amax(dim=1))
    for row in q:
        assert len(torch.unique(row)) <= 15


def test_int_asymmetric_and_groups():
    w = _weights(2, (4, 128)) + 3.0  # all-positive rows: asymmetric quantization uses the range better
    sym = (formats.quantize_int(w, 3) - w).pow(2).mean()
    asym = (formats.quantize_int(w, 3, symmetric=False) - w).pow(2).mean()
    grouped = (formats.quantize_int(w, 3, symmetric=False, group_size=32) - w).pow(2).mean()
    assert asym < sym and grouped < asym


def test_blockwise_absmax_is_exact_per_block():
    w = _weights(3, (4, 128))
    q = formats.quantize(w, 4, "nf").reshape(-1, 64)
    assert torch.allclose(q.abs().amax(dim=1), w.reshape(-1, 64).abs().amax(dim=1))


def test_plan_puts_mask_at_bits_and_the_rest_at_high_bits():
    modules = ["a", "b", "c"]
    assert plan(modules, ["b"], 4, 16) == {"b": 4}
    assert plan(modules, ["b"], 4, 8) == {"a": 8, "b": 4, "c": 8}


def test_fake_apply_quantizes_conv1d_per_output_channel():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16))
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D: weight is (in, out)
    before = conv.weight.detach().clone()
    stats = apply(model, {"transformer.h.0.mlp.c_fc": 3}, tree(format="int"))
    after = conv.weight.detach()
    assert torch.equal(after, formats.quantize_int(before.t(), 3).t())
    assert stats[0]["module"] == "transformer.h.0.mlp.c_fc" and stats[0]["quant_mse"] > 0



def test_noise_ratio_of_a_min_max_quantizer_is_the_step_ratio_squared():
    """Uniform weights with every row's max |w| = 1: the 3-bit symmetric step is 1/(2^2 - 1) = 1/3, rounding error
    is uniform over a step (variance step²/12), and the noise model's Δ = 2^(1-3) = 1/4; so quant_mse over
    noise_var_uniform = (4/3)² = 16/9, times 63/64 because each row's pinned maximum is exact."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=64, n_positions=16))
    conv = model.transformer.h[0].mlp.c_fc  # (in 64, out 256): 256 rows of 64 inputs
    with torch.no_grad():
        conv.weight.copy_(torch.rand(64, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1)
        conv.weight[0] = 1.0  # input 0 of every output row: each row's max |w| is 1
    stats = apply(model, {"transformer.h.0.mlp.c_fc": 3}, tree(format="int"))
    assert stats[0]["noise_var_uniform"] == pytest.approx((1 / 4) ** 2 / 12, rel=1e-12)
    assert stats[0]["quant_mse"] / stats[0]["noise_var_uniform"] == pytest.approx(16 / 9 * 63 / 64, rel=0.02)


def test_cuda_rule_for_the_dynamic_code_picks_a_nearest_code():
    """bitsandbytes' CUDA binary search (emulated for the fake backend on a GPU) lands on the nearest of the 256
    codes for values off a midpoint; on a midpoint, one of its two neighbours (which one depends on the search)."""
    code = formats.dynamic_code()
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mids = (code[1:] + code[:-1]) * 0.5
    assert torch.equal(formats._dynamic_index_cuda(x, code), torch.searchsorted(mids, x))
    assert torch.equal(formats._dynamic_index_cuda(code, code), torch.arange(256))
    on = formats._dynamic_index_cuda(mids, code) - torch.arange(255)
    assert set(on.tolist()) == {0, 1}
