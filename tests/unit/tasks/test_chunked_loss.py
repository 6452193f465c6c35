"""`loss_kernel: chunked` against the standard loss: the same loss and gradients on GPT-2 and Llama (peft LoRA, chunks
that do not divide the tokens, float32 and bf16 autocast), never a tensor of all the logits kept for backward, a
model whose head is more than a linear map refused, and the setting a different cell only when it is set."""

from __future__ import annotations

import pytest
import torch

from conftest import CONFIG_ARGS, CONFIGS
from qlbench.errors import QlbenchError
from qlbench.tasks import causal_lm, chunked_loss

VOCAB, TOKENS = 3000, (3, 50)  # 147 predicted tokens: chunks of 37 leave a short last one


def _lora(arch: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg, targets = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0), ["c_attn"]
    else:
        cfg, targets = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True), ["q_proj", "v_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg),
                           LoraConfig(r=4, target_modules=targets, fan_in_fan_out=arch == "gpt2"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would make every A gradient zero in both losses
            torch.nn.init.normal_(p, std=0.05)
    return model


def _loss_and_grads(model, loss, x, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss(model, x)
    value.backward()
    return value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_the_chunked_loss_is_the_standard_loss_and_its_gradients(arch, autocast):
    model = _lora(arch)
    x = torch.randint(0, VOCAB, TOKENS, generator=torch.Generator().manual_seed(1))
    standard, g_standard = _loss_and_grads(model, causal_lm.loss, x, autocast)
    chunked, g_chunked = _loss_and_grads(model, lambda m, b: chunked_loss.loss(m, b, chunk_tokens=37), x, autocast)
    assert standard == pytest.approx(chunked, rel=1e-6, abs=0)  # the same sum, rounded in another order
    assert g_standard.keys() == g_chunked.keys() and len(g_standard) == {"gpt2": 4, "llama": 8}[arch]
    for name, g in g_standard.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g_chunked[name], g, rtol=1e-5, atol=1e-7)


def _largest_saved(model, loss, x) -> int:
    """The most elements of any tensor autograd keeps for backward while the loss is made."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(model, x)
    return max(sizes)


def test_the_chunked_loss_never_keeps_all_the_logits():
    """The standard loss keeps the [tokens, vocab] logits for backward; the chunked one at most a chunk's hidden
    states (each chunk's logits are made again in backward)."""
    model = _lora("gpt2")
    x = torch.randint(0, VOCAB, TOKENS, generator=torch.Generator().manual_seed(1))
    all_logits = TOKENS[0] * TOKENS[1] * VOCAB
    assert _largest_saved(model, causal_lm.loss, x) >= all_logits
    largest = _largest_saved(model, lambda m, b: chunked_loss.loss(m, b, chunk_tokens=37), x)
    assert largest < 37 * VOCAB < all_logits / 3


def test_a_head_that_is_more_than_a_linear_map_is_refused_in_one_line():
    model = _lora("gpt2")
    model.get_base_model().config.final_logit_softcapping = 30.0  # Gemma 2's: its logits are not head(hidden)
    with pytest.raises(QlbenchError, match="final_logit_softcapping.*loss_kernel standard"):
        chunked_loss.loss(model, torch.zeros(1, 8, dtype=torch.long))


def test_the_chunked_loss_is_a_different_cell_and_standard_the_cell_as_it_was():
    from qlbench.study import config as studylib, grid

    st = studylib.load(studylib.read_config(CONFIGS), "micro")
    cell = grid.cells(st)[0]
    plain = studylib.cell_identity(st, cell)[1]
    assert studylib.cell_identity(st, cell, {**st.settings, "loss_kernel": "chunked"})[1] != plain
    assert studylib.cell_identity(st, cell, {**st.settings, "loss_kernel": "standard"})[1] == plain


@pytest.mark.parametrize("setting, message", [
    ({"task": "classification"}, "loss_kernel chunked: a causal LM's loss"),
    ({"switch_bits": [8, 4], "switch_schedule": "sequential", "bits": [4]}, "distils from the teacher's logits"),
])
def test_the_chunked_loss_where_it_cannot_apply_is_one_line_before_any_job(setting, message):
    from qlbench.study import config as studylib

    config = studylib.read_config(CONFIGS)
    micro = config["studies"]["micro"]
    config["studies"]["micro"] = {**micro, "loss_kernel": "chunked", "backend": "fake", **setting}
    with pytest.raises(QlbenchError, match=message):
        studylib.load(config, "micro")


def test_a_cell_with_the_chunked_loss_trains_as_the_standard_cell_does(tmp_path, micro_resources):
    """Through `qlbench run`: the same micro cell (4-bit fake base, 6 steps) under both kernels; the chunked cell's
    settings say so, and its curve follows the standard one's to float32 rounding (the grads match, so the updates
    do)."""
    import subprocess

    import polars as pl

    from conftest import BIN

    rows = {}
    for kernel in ("standard", "chunked"):
        out = tmp_path / kernel
        subprocess.run([BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--model",
                        "micro-gpt2", "--bits", "4", "--rank", "4", "--mask", "all", "--out", out, "--set", "steps=6",
                        "--set", "checkpoint_every=0", "--set", f"loss_kernel={kernel}"],
                       check=True, capture_output=True, cwd=micro_resources.parent)
        rows[kernel] = pl.read_parquet(out / "row.parquet").row(0, named=True)
    assert "loss_kernel" not in rows["standard"]["settings_json"]
    assert '"loss_kernel": "chunked"' in rows["chunked"]["settings_json"]
    assert rows["chunked"]["config_hash"] != rows["standard"]["config_hash"]
    assert "loss: chunked" in (tmp_path / "chunked" / "log.txt").read_text()  # the loop was given the chunked loss
    assert "loss: chunked" not in (tmp_path / "standard" / "log.txt").read_text()
    curves = {k: [point["loss"] for point in row["curve"]] for k, row in rows.items()}
    assert len(curves["chunked"]) == 6 and curves["chunked"] == pytest.approx(curves["standard"], rel=1e-5)
    assert rows["chunked"]["eval_loss"] == pytest.approx(rows["standard"]["eval_loss"], rel=1e-5)
