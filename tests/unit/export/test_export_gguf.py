"""The GGUF writer against transformers' own GGUF loader: a GPT-2 and a Llama (q/k rows permuted as llama.cpp's
converter does) with mixed per-layer types load offline; each tensor equals the GGUF backend's rounding of it (0
difference), each stored type is the plan's, the tokenizer in the file encodes as the original; a scale broken in the
file or a type written wrong is seen."""

from __future__ import annotations

from pathlib import Path

import re

import pytest
import torch

gguf = pytest.importorskip("gguf")

from qlbench.export import gguf as eg  # noqa: E402
from qlbench.quant import gguf as qg  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog; how are you today? fine, thanks. " * 40


@pytest.fixture(scope="module")
def tokenizer():
    from qlbench.data.models import train_tokenizer

    return train_tokenizer(TEXT, 300)


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=64, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg).eval()


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def _plan(model):
    lin = [n for n, m in model.named_modules() if n and (type(m).__name__ in ("Conv1D", "Linear")) and "lm_head" not in n]
    kinds = ("Q8_0", "Q4_0", "Q5_1", "Q4_1")
    return {n: kinds[i % len(kinds)] for i, n in enumerate(lin)}


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_the_file_loads_in_transformers_as_the_backends_rounding(tmp_path, tokenizer, build):
    model = build(tokenizer)
    types = _plan(model)
    path = tmp_path / "m.gguf"
    got = eg.write(model, tokenizer, types, path)
    assert got == types
    stored = eg.stored_types(path)
    arch, n_layer = model.config.model_type, model.config.num_hidden_layers
    assert {m: stored[eg.tensor_name(arch, n_layer, m)] for m in types} == types
    qg.deploy(model, {m: (16, t) for m, t in types.items()}, None)  # the backend's rounding, in place
    loaded, tok = eg.load(path)
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert set(mine) - {"lm_head.weight"} <= set(theirs)
    for k, v in mine.items():
        assert torch.equal(theirs[k].float(), v.float()), k  # 0 difference, q/k un-permuted included
    x = tokenizer("how are you today, fox?", return_tensors="pt").input_ids
    assert tok("how are you today, fox?").input_ids == x[0].tolist()
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)


def test_a_broken_scale_in_the_file_is_seen(tmp_path, tokenizer):
    model = _gpt2(tokenizer)
    types = _plan(model)
    path = tmp_path / "m.gguf"
    eg.write(model, tokenizer, types, path)
    name = "transformer.h.0.attn.c_attn"
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == eg.tensor_name("gpt2", 2, name))
    raw = bytearray(path.read_bytes())
    raw[tensor.data_offset + 1] ^= 0x04  # the first block's float16 scale
    path.write_bytes(bytes(raw))
    loaded, _ = eg.load(path)
    qg.deploy(model, {m: (16, t) for m, t in types.items()}, None)
    assert not torch.equal(loaded.state_dict()[name + ".weight"], model.state_dict()[name + ".weight"])


def test_a_type_written_wrong_is_refused_by_the_export_check(tmp_path, tokenizer, monkeypatch):
    model = _gpt2(tokenizer)
    types = _plan(model)
    real = qg.quantized
    monkeypatch.setattr(qg, "quantized", lambda rows, name: real(rows, "Q5_0" if name == "Q4_0" else name))
    path = tmp_path / "m.gguf"
    eg.write(model, tokenizer, types, path)
    stored = eg.stored_types(path)
    differs = {m for m, t in types.items() if stored[eg.tensor_name("gpt2", 2, m)] != t}
    assert differs == {m for m, t in types.items() if t == "Q4_0"} and differs


def test_other_architectures_are_refused_in_one_line(tmp_path, tokenizer):
    from qlbench.errors import QlbenchError

    model = _gpt2(tokenizer)
    model.config.model_type = "opt"
    with pytest.raises(QlbenchError, match="'opt' models are not written"):
        eg.write(model, tokenizer, {}, tmp_path / "m.gguf")


def test_qlbench_export_format_gguf_writes_the_recommendations_types(tmp_path, micro_resources, monkeypatch):
    """`qlbench export micro --format gguf` on a recommendation: each recommended layer stored in its width's type
    (4 -> Q4_0, 5 -> Q5_0, 8 -> Q8_0), the rest F32; a width gguf-py has no quantizer for is one line."""
    import json
    import shutil

    import polars as pl
    from click.testing import CliRunner

    from conftest import CONFIG_ARGS
    from qlbench.cli import main

    shutil.copytree(micro_resources, tmp_path / "resources")
    monkeypatch.chdir(tmp_path)
    bit_map = {"b0.attn.c_attn": 4, "b1.mlp.c_fc": 8, "b1.attn": 5}
    rec = pl.DataFrame([{"model": "micro-gpt2", "n_train": None, "rank": 4, "level": "module",
                         "bit_map": json.dumps(bit_map)}])
    (tmp_path / "results/micro/sensitivity").mkdir(parents=True)
    rec.write_parquet(tmp_path / "results/micro/sensitivity/recommendation.parquet")
    res = CliRunner().invoke(main, ["export", *map(str, CONFIG_ARGS), "micro", "--format", "gguf"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "results/micro/export/gguf_micro-gpt2_r4_module.gguf"
    stored = eg.stored_types(path)
    assert {k: v for k, v in stored.items() if v != "F32"} == {
        "blk.0.attn_qkv.weight": "Q4_0", "blk.1.ffn_up.weight": "Q8_0", "blk.1.attn_qkv.weight": "Q5_0",
        "blk.1.attn_output.weight": "Q5_0"}
    loaded, _ = eg.load(path)
    assert loaded.config.n_layer == 2
    # the file's eval loss equals the base in these types by qlbench's own backend (what a gguf cell measures)
    file_loss, ours = map(float, re.search(r"transformers loads it: ([0-9.]+) \(.*: ([0-9.]+)\)", res.output).groups())
    assert file_loss == pytest.approx(ours, abs=1e-5) and file_loss > 0
    rec.with_columns(bit_map=pl.lit(json.dumps({"b0": 2}))).write_parquet(
        tmp_path / "results/micro/sensitivity/recommendation.parquet")
    res = CliRunner().invoke(main, ["export", *map(str, CONFIG_ARGS), "micro", "--format", "gguf"])
    assert res.exit_code != 0 and "no type gguf-py can quantize at 2 bits" in res.output


def test_a_study_that_ranks_no_layers_says_where_a_recommendation_comes_from(tmp_path, monkeypatch):
    """The demo masks every block at once: nothing to recommend; the error names its cells and the studies on its
    base that rank layers, in one line, before loading anything."""
    from click.testing import CliRunner

    from conftest import CONFIG_ARGS
    from qlbench.cli import main

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["export", *map(str, CONFIG_ARGS), "demo", "--format", "gguf"])
    assert res.exit_code != 0 and "study demo has no recommendation" in res.output
    assert "(--cell)" in res.output and "sensitivity" in res.output.split("ranks layers")[1]
