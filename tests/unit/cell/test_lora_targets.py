"""LoRA target presets, Q/K/V slices of GPT-2's fused c_attn, and quantized adapters (straight-through)."""

from __future__ import annotations

import pytest
import torch

from qlbench.cell import lora
from qlbench.study import targets
from qlbench.errors import QlbenchError
from qlbench.quant import adapters
from qlbench.study.settings import tree

SETTINGS = tree(lora_alpha="2r", lora_dropout=0.0, backend="fake", targets=None)


def test_presets_resolve_per_architecture():
    assert targets.resolve("qv", "gpt2") == (["c_attn"], {"c_attn": ("q", "v")})
    assert targets.resolve("kv", "gpt2") == (["c_attn"], {"c_attn": ("k", "v")})
    assert targets.resolve("attn_mlp", "gpt2")[0] == ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert targets.resolve("kv", "llama") == (["k_proj", "v_proj"], {})
    assert targets.resolve(["c_attn[v]", "mlp.c_fc"], "gpt2") == (["c_attn", "mlp.c_fc"], {"c_attn": ("v",)})
    assert targets.label("qv") == "qv" and targets.label(["c_attn", "attn.c_proj"]) == "c_attn,attn.c_proj"
    with pytest.raises(QlbenchError, match="unknown preset"):
        targets.resolve("qk", "gpt2")
    with pytest.raises(QlbenchError, match="fused"):
        targets.resolve(["q_proj[q]"], "llama")


def _micro(resources):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resources / "models/micro-gpt2")
    model.requires_grad_(False)
    return model


def _train(model, steps=4, seed=0):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 500, (4, 32), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


def _delta_w(model, name="transformer.h.0.attn.c_attn"):
    """ΔW = B·A of a LoRA layer, as an (out, in) matrix."""
    layer = model.base_model.model.get_submodule(name)
    return layer.lora_B["default"].weight @ layer.lora_A["default"].weight


@pytest.mark.parametrize("backend", ["fake", "bnb"])
@pytest.mark.parametrize("preset,kept", [("qv", "qv"), ("kv", "kv")])
def test_slice_restricted_lora_leaves_other_slices_exactly_zero(micro_resources, preset, kept, backend):
    model = _micro(micro_resources)
    if backend == "bnb":
        from qlbench.quant import bnb

        bnb.apply(model, {"transformer.h.0.attn.c_attn": 4},
                  tree(format="nf", double_quant=True, group_size=None, compute_dtype="float32"))
    torch.manual_seed(0)
    model = lora.attach(model, 4, SETTINGS.replace(backend=backend, targets=preset), "gpt2")
    _train(model)
    for block in (0, 1):
        dw = _delta_w(model, f"transformer.h.{block}.attn.c_attn")
        width = dw.shape[0] // 3
        for i, part in enumerate("qkv"):
            rows = dw[i * width : (i + 1) * width]
            if part in kept:
                assert rows.abs().max() > 0, (block, part)
            else:
                assert torch.count_nonzero(rows) == 0, (block, part)


def test_attention_preset_adapts_both_attention_linears(micro_resources):
    model = lora.attach(_micro(micro_resources), 2, SETTINGS.replace(targets="attn"), "gpt2")
    adapted = {n.rsplit(".lora_A", 1)[0].split("h.0.")[-1] for n, _ in model.named_modules()
               if ".h.0." in n and n.endswith("lora_A")}
    assert adapted == {"attn.c_attn", "attn.c_proj"}


def test_round_to_bits_levels_and_zero():
    w = torch.linspace(-1, 1, 101)
    q = adapters.round_to_bits(w, 3)
    assert torch.allclose(torch.unique(q), torch.arange(-3, 4) / 3)  # 2^3 - 1 symmetric levels
    assert torch.equal(adapters.round_to_bits(torch.zeros(5), 4), torch.zeros(5))
    assert torch.equal(adapters.round_to_bits(q, 3), q)  # idempotent: the saved adapter computes what was trained
    # the noise model: error variance ≈ Δ²/12 for values spread over many levels
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    delta = x.abs().max() / (2**5 - 1)
    assert (adapters.round_to_bits(x, 6) - x).var().item() == pytest.approx(delta.item() ** 2 / 12, rel=0.05)


def test_straight_through_gradient_is_the_identity():
    w = torch.randn(4, 6, requires_grad=True)
    (adapters.straight_through(w, 2) * torch.arange(24.0).view(4, 6)).sum().backward()
    assert torch.equal(w.grad, torch.arange(24.0).view(4, 6))


def test_quantized_adapters_compute_with_rounded_weights_and_still_learn(micro_resources):
    torch.manual_seed(0)
    model = lora.attach(_micro(micro_resources), 4, SETTINGS.replace(targets="attn"), "gpt2")
    assert adapters.apply(model, 16) == 0
    assert adapters.apply(model, 3) == 2 * 2 * 2  # A and B of 2 modules in 2 blocks
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _train(model)
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    a = layer.lora_A["default"]
    x = torch.randn(2, a.in_features)
    assert torch.equal(a(x), torch.nn.functional.linear(x, adapters.round_to_bits(a.weight, 3)))
    state = lora.adapter_state(model)
    saved = [v for k, v in state.items() if "h.0.attn.c_attn.lora_A" in k]
    assert len(saved) == 1 and torch.equal(saved[0], adapters.round_to_bits(a.weight.detach(), 3))
    assert len(torch.unique(saved[0])) <= 2**3 - 1


def test_a_cell_with_qv_targets_and_4bit_adapters(tmp_path, micro_resources):
    """Through `qlbench run`: the row records the settings, and the saved ΔW has no K rows and 4-bit A and B."""
    import os
    import subprocess

    import polars as pl
    from safetensors.torch import load_file

    from conftest import BIN, CONFIG_ARGS

    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model", "micro-gpt2",
           "--bits", "4", "--rank", "4", "--mask", "all", "--out", tmp_path / "cell", "--set", "targets=qv",
           "--set", "adapter_bits=4", "--set", "steps=6", "--set", "checkpoint_every=0", "--set", "eval_batches=2"]
    done = subprocess.run(cmd, cwd=micro_resources.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    row = pl.read_parquet(tmp_path / "cell/row.parquet").row(0, named=True)
    assert row["targets"] == "qv" and row["adapter_bits"] == 4 and row["weight_mem_mb"] > 0
    state = load_file(tmp_path / "cell/adapter.safetensors")
    a = next(v for k, v in state.items() if "h.0.attn.c_attn.lora_A" in k)
    b = next(v for k, v in state.items() if "h.0.attn.c_attn.lora_B" in k)
    width = b.shape[0] // 3
    assert torch.count_nonzero(b[width : 2 * width]) == 0 and b[:width].abs().max() > 0
    assert len(torch.unique(a)) <= 15 and len(torch.unique(b)) <= 15  # 2^4 - 1 levels
