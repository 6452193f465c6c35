import torch

from qlbench.quant.activations import apply, per_token


def all_at(model, bits: int = 8) -> dict:
    """Every linear of `model` at `bits`: the widths the hooks read (a layer at 16 bits is left alone)."""
    from transformers.pytorch_utils import Conv1D

    return {n: bits for n, m in model.named_modules() if isinstance(m, (Conv1D, torch.nn.Linear)) and "head" not in n}


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
    handles = apply(model, [], act_bits=16, kv_bits=3, arch="gpt2", n_layer=2,
                    widths=all_at(model))
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
    handles = apply(model, ["transformer.h.1.mlp.c_fc"], act_bits=2, kv_bits=16, arch="gpt2", n_layer=2,
                    widths=all_at(model))
    assert not torch.allclose(model(x).logits, reference) and len(handles) == 1


def levels_per_token(t: torch.Tensor) -> int:
    """The most distinct values any token's vector holds."""
    return max(len(torch.unique(tok)) for tok in t.reshape(-1, t.shape[-1]))


def test_gpt2_values_are_quantized_too_and_linear_inputs_take_at_most_2b_minus_1_levels():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)).eval()
    x = torch.randint(0, 64, (2, 8))
    seen = {}
    apply(model, ["transformer.h.1.mlp.c_fc", "transformer.h.0.attn.c_proj"], act_bits=3, kv_bits=4, arch="gpt2",
          n_layer=2, widths=all_at(model))
    for name in ("transformer.h.1.mlp.c_fc", "transformer.h.0.attn.c_proj"):  # pre-hooks run after ours
        model.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0]))
    for i in range(2):
        model.transformer.h[i].attn.c_attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    model(x)
    for name in ("transformer.h.1.mlp.c_fc", "transformer.h.0.attn.c_proj"):
        assert levels_per_token(seen[name]) <= 2**3 - 1  # 3 bits, symmetric: -3..3
    for i in range(2):
        q, k, v = seen[i].chunk(3, dim=-1)
        assert levels_per_token(k) <= 15 and levels_per_token(v) <= 15  # 4-bit keys and values in every block
        assert levels_per_token(q) > 15  # queries are not a cache: left alone


def test_llama_keys_values_and_inputs_are_quantized_where_llama_keeps_them():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 64, (2, 8))
    reference = model(x).logits
    handles = apply(model, ["model.layers.1.mlp.down_proj"], act_bits=4, kv_bits=3, arch="llama", n_layer=2,
                    widths=all_at(model))
    assert len(handles) == 1 + 2 * 2  # one input hook; k_proj and v_proj in each block
    seen = {}
    for i in range(2):
        for p in ("q", "k", "v"):
            model.get_submodule(f"model.layers.{i}.self_attn.{p}_proj").register_forward_hook(
                lambda m, a, out, key=(i, p): seen.__setitem__(key, out))
    model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("down", a[0]))
    assert not torch.allclose(model(x).logits, reference)
    for i in range(2):
        assert levels_per_token(seen[(i, "k")]) <= 7 and levels_per_token(seen[(i, "v")]) <= 7
        assert levels_per_token(seen[(i, "q")]) > 7
    assert levels_per_token(seen["down"]) <= 15
