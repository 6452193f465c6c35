"""The llm-compressor recipe of a recommendation: one group per width targeting exactly the layers at that width.
Where llm-compressor is installed (not beside qlbench's transformers: an environment of its own), its `oneshot`
applies the recipe to a Llama-shaped model and every layer's scheme has the recommended width."""

from __future__ import annotations

import json

import pytest
import yaml

from qlbench.errors import QlbenchError
from qlbench.export import llmc
from qlbench.study import masks as masklang
from qlbench.study.settings import tree

LAYOUT = masklang.layout("llama", 2)
BIT_MAP = {"b0.self_attn.q_proj": 4, "b1.self_attn.q_proj": 8, "b0.mlp.down_proj": 2, "b1.mlp": 3}
ROW = {"model": "tiny-llama", "rank": 8, "level": "module", "bit_map": json.dumps(BIT_MAP)}


def _want() -> dict[str, int]:
    out = dict.fromkeys(LAYOUT.all_names(), 16)
    for unit, w in BIT_MAP.items():
        for name in masklang.resolve(unit, LAYOUT):
            out[name] = w
    return out


def test_the_recipe_targets_each_layer_at_its_width():
    r = yaml.safe_load(llmc.text(llmc.recipe(ROW, LAYOUT, tree(group_size=32).quant)))
    mod = r["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    got = dict.fromkeys(LAYOUT.all_names(), 16)
    for g in mod["config_groups"].values():
        assert g["weights"]["strategy"] == "group" and g["weights"]["group_size"] == 32 and g["weights"]["symmetric"]
        for name in g["targets"]:
            assert got[name] == 16, f"{name} in two groups"
            got[name] = g["weights"]["num_bits"]
    assert got == _want() and mod["ignore"] == ["lm_head"]
    channel = llmc.recipe(ROW, LAYOUT, tree().quant)["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert {g["weights"]["strategy"] for g in channel["config_groups"].values()} == {"channel"}


def test_the_recipe_refuses_gpt2_and_widths_it_lacks():
    with pytest.raises(QlbenchError, match="Conv1D"):
        llmc.recipe(ROW, masklang.layout("gpt2", 2), tree().quant)
    with pytest.raises(QlbenchError, match="2-8 bits"):
        llmc.recipe({**ROW, "bit_map": json.dumps({"b0": 1})}, LAYOUT, tree().quant)


def test_llmcompressor_applies_the_recipe_layer_by_layer(tmp_path):
    pytest.importorskip("llmcompressor")
    import torch
    from llmcompressor import oneshot
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(tmp_path / "tiny")
    (tmp_path / "recipe.yaml").write_text(llmc.text(llmc.recipe(ROW, LAYOUT, tree(group_size=32).quant)))
    model = oneshot(model=str(tmp_path / "tiny"), recipe=str(tmp_path / "recipe.yaml"), output_dir=str(tmp_path / "q"))
    got = {}
    for name in LAYOUT.all_names():
        scheme = getattr(model.get_submodule(name), "quantization_scheme", None)
        got[name] = scheme.weights.num_bits if scheme is not None else 16
    assert got == _want()
    saved = json.loads((tmp_path / "q/config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "compressed-tensors"


def test_qlbench_export_writes_the_recipe_beside_the_hqq_config_for_a_llama_model(tmp_path):
    """The smollm2 study (Llama-shaped, 30 blocks): both files, from one recommendation row, with the same widths."""
    pl = pytest.importorskip("polars")
    from pathlib import Path

    from click.testing import CliRunner

    from qlbench.cli import main

    repo = Path(__file__).resolve().parents[3]
    bit_map = {"b0.self_attn.q_proj": 4, "b29.mlp": 8, "b3": 2}
    rec = pl.DataFrame([{"model": "smollm2", "n_train": None, "rank": 8, "level": "module",
                         "bit_map": json.dumps(bit_map)}], schema_overrides={"n_train": pl.Int64})
    rec.write_parquet(tmp_path / "rec.parquet")
    res = CliRunner().invoke(main, ["export", "-c", str(repo / "config.yaml"), "smollm2", "--recommendation",
                                    str(tmp_path / "rec.parquet"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    hqq_cfg = json.loads((tmp_path / "x/hqq_smollm2_r8_module.json").read_text())
    recipe = yaml.safe_load((tmp_path / "x/llmc_smollm2_r8_module.yaml").read_text())
    groups = recipe["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["config_groups"]
    from_recipe = {n: g["weights"]["num_bits"] for g in groups.values() for n in g["targets"]}
    from_hqq = {n: c["nbits"] for n, c in hqq_cfg["layers"].items() if c is not None}
    lay = masklang.layout("llama", 30)
    want = {n: w for u, w in bit_map.items() for n in masklang.resolve(u, lay)}
    assert from_recipe == from_hqq == want
