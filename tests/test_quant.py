import pytest
import torch

from qlbench.quant import formats, plan
from qlbench.quant.fake import apply
from qlbench.study.config import DEFAULTS


def _weights(seed=0, shape=(64, 256)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["int", "nf"])
def test_error_falls_as_bits_grow(fmt):
    w = _weights()
    errors = [(formats.quantize(w, b, fmt) - w).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 100


def test_nf4_code_table_is_bitsandbytes():
    code = formats.nf_code(4)
    assert len(code) == 16 and code[0] == -1 and code[-1] == 1 and 0.0 in code.tolist()
    assert torch.all(code[1:] > code[:-1])
    # the general normal-float construction reproduces the stored NF4 table to float precision
    half = 8
    pos = torch.special.ndtri(torch.linspace(formats.NF_OFFSET, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(formats.NF_OFFSET, 0.5, half, dtype=torch.float64)[:-1])
    built = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    assert torch.allclose((built / built.abs().max()).float(), code, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_nf_codes_have_2_to_the_bits_values(bits):
    code = formats.nf_code(bits)
    assert len(code) == 2**bits and code.min() == -1 and code.max() == 1 and 0.0 in code.tolist()


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
    stats = apply(model, {"transformer.h.0.mlp.c_fc": 3}, {**DEFAULTS, "format": "int"})
    after = conv.weight.detach()
    assert torch.equal(after, formats.quantize_int(before.t(), 3).t())
    assert stats[0]["module"] == "transformer.h.0.mlp.c_fc" and stats[0]["quant_mse"] > 0
    # the uniform-noise model is in the right range for a min-max quantizer
    assert 0.05 < stats[0]["quant_mse"] / stats[0]["noise_var_uniform"] < 20
