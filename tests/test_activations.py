import torch

from qlbench.quant.activations import apply, per_token


def test_per_token_scales_and_straight_through_gradient():
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 1000  # a loud token must not coarsen the others
    q = per_token(x, 4)
    assert torch.allclose(q.abs().amax(-1), x.abs().amax(-1))
    assert torch.equal(per_token(x[1:], 4), q[1:])
    assert all(len(torch.unique(tok)) <= 15 for tok in q.reshape(-1, 16))
    x.requires_grad_(True)
    per_token(x, 4).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_hooks_quantize_linear_inputs_and_gpt2_keys_values_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)).eval()
    x = torch.randint(0, 64, (2, 8))
    reference = model(x).logits
    seen = {}
    c_attn = model.transformer.h[0].attn.c_attn
    spy = c_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("plain", out.detach()))
    model(x)
    spy.remove()
    handles = apply(model, [], act_bits=16, kv_bits=3, arch="gpt2", n_layer=2)
    c_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("qkv", out.detach()))  # runs after ours
    quantized = model(x).logits
    assert not torch.allclose(quantized, reference)
    q, k, v = seen["qkv"].chunk(3, dim=-1)
    plain_q, plain_k, _ = seen["plain"].chunk(3, dim=-1)
    assert torch.equal(q, plain_q) and not torch.equal(k, plain_k)  # queries untouched, keys quantized
    assert all(len(torch.unique(tok)) <= 7 for tok in k.reshape(-1, 32))  # 3-bit keys: at most 7 levels
    model.transformer.h[0].attn.c_attn._forward_hooks.popitem()
    for h in handles:
        h.remove()
    assert torch.allclose(model(x).logits, reference)
    handles = apply(model, ["transformer.h.1.mlp.c_fc"], act_bits=2, kv_bits=16, arch="gpt2", n_layer=2)
    assert not torch.allclose(model(x).logits, reference) and len(handles) == 1
