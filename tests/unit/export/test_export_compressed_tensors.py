"""The compressed-tensors folder against what a `backend: compressed_tensors` cell computes with: compressed-tensors'
own decompression of the stored tensors gives the cell's dequantized weights exactly (symmetric and asymmetric, two
widths in one folder); transformers' default load gives its logits; a scale or a width written wrong is seen."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from qlbench.errors import QlbenchError

pytest.importorskip("compressed_tensors")
from qlbench.export import compressed_tensors as export  # noqa: E402
from qlbench.quant import compressed_tensors as ct  # noqa: E402

X = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def tiny_gpt2():
    """A random GPT-2 whose every linear takes 128 or 512 inputs (groups of 128 fit), in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=128, n_positions=64, vocab_size=256)).eval()


def settings(symmetric=True, group_size=None):
    return SimpleNamespace(quant=SimpleNamespace(symmetric=symmetric, group_size=group_size))


def linears(model):
    return [n for n, _ in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))]


def mixed_plan(model) -> dict[str, int]:
    """Attention at 8 bits, the MLP at 4, block 1's MLP output left at 16."""
    return {n: 4 if ".mlp." in n else 8 for n in linears(model) if n != "transformer.h.1.mlp.c_proj"}


def in_memory(model, plan, symmetric=True, group_size=None):
    """The cell's quantized model: the backend on a copy."""
    q = copy.deepcopy(model)
    ct.apply(q, plan, settings(symmetric, group_size))
    return q


def rows_as_opt(q, plan) -> dict[str, torch.Tensor]:
    """The in-memory dequantized weights under the folder's (OPT) names: c_attn's rows split into q, k, v."""
    out = {}
    for name in plan:
        w = q.get_submodule(name).weight.detach()
        names = export.opt_names(name)
        for i, n in enumerate(names):
            out[n] = w.chunk(len(names))[i]
    return out


@pytest.mark.parametrize("symmetric,group_size", [(True, None), (False, None), (False, 32), (True, 0)])
def test_the_folder_stores_what_the_cell_computed_with(tmp_path, symmetric, group_size):
    model = tiny_gpt2()
    plan = mixed_plan(model)
    expected = rows_as_opt(in_memory(model, plan, symmetric, group_size), plan)
    export.write(copy.deepcopy(model), plan, settings(symmetric, group_size).quant, tmp_path / "ct")
    stored = export.stored_weights(tmp_path / "ct")
    assert stored.keys() == expected.keys()
    for name, w in expected.items():
        assert torch.equal(stored[name], w), name
    assert export.layer_schemes(tmp_path / "ct") == {n: f"w{plan[g]}a16" for g in plan for n in export.opt_names(g)}


def test_transformers_loads_it_and_computes_the_cells_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_gpt2()
    plan = mixed_plan(model)
    q = in_memory(model, plan)
    export.write(copy.deepcopy(model), plan, settings().quant, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct/config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()  # CompressedTensorsConfig() by default
    assert type(loaded).__name__ == "OPTForCausalLM"
    assert export.loaded_schemes(loaded) == export.layer_schemes(tmp_path / "ct")
    with torch.no_grad():
        diff = (loaded(X).logits - q(X).logits).abs().max().item()
        moved = (model(X).logits - q(X).logits).abs().max().item()
    assert diff < 1e-4 < moved  # float rounding (OPT's attention against GPT-2's), not quantization


def test_gpt2_as_opt_computes_the_same():
    model = tiny_gpt2()
    with torch.no_grad():
        assert (export.as_opt(copy.deepcopy(model))(X).logits - model(X).logits).abs().max().item() < 1e-4


def test_a_llama_model_keeps_its_names(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256)).eval()
    plan = {n: 4 if "mlp" in n else 8 for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    q = in_memory(model, plan)
    export.write(copy.deepcopy(model), plan, settings().quant, tmp_path / "ct")
    assert export.layer_schemes(tmp_path / "ct") == {n: f"w{b}a16" for n, b in plan.items()}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    with torch.no_grad():
        assert (loaded(X).logits - q(X).logits).abs().max().item() < 1e-5


def test_a_wrong_scale_or_width_in_the_folder_is_seen(tmp_path):
    """What the parity checks guard: one scale doubled, or a group's width changed, no longer matches."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = tiny_gpt2()
    plan = mixed_plan(model)
    q = in_memory(model, plan)
    folder = export.write(copy.deepcopy(model), plan, settings().quant, tmp_path / "ct")
    path = folder / "model.safetensors"
    state = load_file(str(path))
    key = "model.decoder.layers.0.fc1.weight_scale"
    save_file({**state, key: state[key] * 2}, str(path), metadata={"format": "pt"})
    stored = export.stored_weights(folder)
    assert not torch.equal(stored["model.decoder.layers.0.fc1"], rows_as_opt(q, plan)["model.decoder.layers.0.fc1"])
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert (loaded(X).logits - q(X).logits).abs().max().item() > 1e-3
    save_file(state, str(path), metadata={"format": "pt"})  # the scale back; the 4-bit group now says 8 bits
    cfg = json.loads((folder / "config.json").read_text())
    for g in cfg["quantization_config"]["config_groups"].values():
        if g["weights"]["num_bits"] == 4:
            g["weights"]["num_bits"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception):  # packed int4 words read as int8: shapes no longer fit
        export.stored_weights(folder)["model.decoder.layers.0.fc1"]
        AutoModelForCausalLM.from_pretrained(folder)


def test_transformers_cannot_load_an_asymmetric_folder_yet(tmp_path):
    """Known limit (transformers 5.24, compressed-tensors 0.20.1): the loader packs the layers on the meta device
    without packing their zero points, so an asymmetric folder's (out / 8, groups) zero points do not fit. The folder
    is right (compressed-tensors' own decompression reads it: above); this test says when the loader is fixed."""
    from transformers import AutoModelForCausalLM

    model = tiny_gpt2()
    folder = export.write(copy.deepcopy(model), mixed_plan(model), settings(symmetric=False).quant, tmp_path / "ct")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_widths_it_cannot_write_are_one_line(tmp_path):
    model = tiny_gpt2()
    with pytest.raises(QlbenchError, match="not 3"):
        export.write(model, {"transformer.h.0.mlp.c_fc": 3}, settings().quant, tmp_path / "ct")


def test_an_asymmetric_folder_evaluates_through_compressed_tensors_own_decompression(tmp_path):
    model = tiny_gpt2()
    plan = mixed_plan(model)
    q = in_memory(model, plan, symmetric=False)
    like = export.linear_model(copy.deepcopy(model), plan)[0]
    folder = export.write(copy.deepcopy(model), plan, settings(symmetric=False).quant, tmp_path / "ct")
    loaded, how = export.folder_model(folder, like)
    assert "own decompression" in how
    with torch.no_grad():
        assert (loaded(X).logits - q(X).logits).abs().max().item() < 1e-4


def test_deploy_rows_name_each_layers_scheme():
    model = tiny_gpt2()
    choices = {"transformer.h.0.mlp.c_fc": (4, "w8a16"), "transformer.h.1.mlp.c_fc": (4, None)}
    rows = ct.deploy(model, choices, settings())
    assert {r["module"]: r["type"] for r in rows} == {"transformer.h.0.mlp.c_fc": "w8a16",
                                                      "transformer.h.1.mlp.c_fc": "w4a16"}
    with pytest.raises(QlbenchError, match="no scheme for 3 bits"):
        ct.deploy(model, {"transformer.h.0.attn.c_attn": (3, None)}, settings())


def test_qlbench_export_format_compressed_tensors_scores_the_recommendation_as_the_backend(
        tmp_path, micro_resources, monkeypatch):
    """`qlbench export micro --format compressed-tensors` on a recommendation: each layer's scheme as recommended,
    and the folder transformers loads scores what qlbench's backend gives the base in those schemes."""
    import re
    import shutil

    import polars as pl
    from click.testing import CliRunner

    from conftest import full_config, write_config
    from qlbench.cli import main

    shutil.copytree(micro_resources, tmp_path / "resources")
    monkeypatch.chdir(tmp_path)
    config = full_config()
    config["studies"]["micro_ct"] = {**config["studies"]["micro"], "group_size": 32}  # W4A16 groups of the 64 inputs
    path = write_config(tmp_path / "ct.yaml", config)
    rec = pl.DataFrame([{"model": "micro-gpt2", "n_train": None, "rank": 4, "level": "block",
                         "bit_map": json.dumps({"b0": 8, "b1": 4})}])
    (tmp_path / "results/micro_ct/sensitivity").mkdir(parents=True)
    rec.write_parquet(tmp_path / "results/micro_ct/sensitivity/recommendation.parquet")
    res = CliRunner().invoke(main, ["export", "-c", str(path), "micro_ct", "--format", "compressed-tensors"])
    assert res.exit_code == 0, res.output
    schemes = export.layer_schemes(tmp_path / "results/micro_ct/export/ct_micro-gpt2_r4_block")
    assert schemes["model.decoder.layers.0.self_attn.q_proj"] == "w8a16"
    assert schemes["model.decoder.layers.1.fc2"] == "w4a16"
    folder_loss, ours = map(float, re.search(r"default load\): ([0-9.]+) \(.*: ([0-9.]+)\)", res.output).groups())
    assert folder_loss == pytest.approx(ours, abs=1e-5) and folder_loss > 0
