"""The `deploy` columns against a by-hand serving: a trained micro cell's adapter merged into the base by hand, each
linear rounded by gguf-py itself (`gguf.quants.quantize` then `dequantize`), evaluated — the row's
`deployed_eval_loss@gguf:TYPE` for every format of a sweep, and the type of every layer recorded; a 16-bit cell is
served too."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS
from qlbench.study import config as studylib
from qlbench.study.grid import Cell

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("bits", [16, 4])
def test_each_deploy_format_is_a_by_hand_gguf_of_the_merged_model(tmp_path, micro_resources, monkeypatch, bits):
    from transformers import AutoModelForCausalLM

    from qlbench.cell.context import begin
    from qlbench.cell.load import load
    from qlbench.cell.run import run

    monkeypatch.chdir(micro_resources.parent)
    st = studylib.load(studylib.read_config(CONFIGS), "micro")
    formats = ["gguf:Q8_0", "gguf:Q4_0"]
    settings = studylib.cell_settings(st, {"steps": 6, "lr": 2e-2, "deploy": formats}, bits)
    cell = Cell("micro-gpt2", bits, 4, "all" if bits < 16 else "none", 0)
    row = run(st, cell, tmp_path / "cell", settings, 1)
    assert row["deploy"] == ", ".join(formats)
    ctx = begin(st, cell, tmp_path / "data", settings, 1)
    base = load(ctx)
    adapter = load_file(tmp_path / "cell/adapter.safetensors")
    scaling = row["lora_alpha"] / cell.rank
    for fmt in formats:
        kind = gguf.GGMLQuantizationType[fmt.partition(":")[2]]
        merged = AutoModelForCausalLM.from_pretrained(micro_resources / "models/micro-gpt2")
        with torch.no_grad():
            for key, a in adapter.items():
                if key.endswith(".lora_A.weight"):
                    name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    b = adapter[key.replace("lora_A", "lora_B")]
                    module = merged.get_submodule(name)
                    module.weight.copy_(module.weight + (scaling * b @ a).t())
            names = [m for m, _ in merged.named_modules() if m.endswith(("c_attn", "c_proj", "c_fc"))]
            for name in names:
                w = merged.get_submodule(name).weight  # Conv1D (in, out): gguf rounds the (out, in) rows
                rows = w.detach().t().contiguous().numpy()
                deq = gguf.quants.dequantize(gguf.quants.quantize(rows, kind), kind)
                w.copy_(torch.from_numpy(deq.copy()).t())
        by_hand = ctx.task.eval_loss(merged, base.data.eval, ctx.settings.train.batch_size, ctx.device, None)
        assert row[f"deployed_eval_loss@{fmt}"] == pytest.approx(by_hand, rel=1e-6, abs=0), fmt
        assert json.loads(row[f"deploy_types@{fmt}"]) == dict.fromkeys(names, kind.name)
    assert row["deployed_eval_loss@gguf:Q8_0"] != row["deployed_eval_loss@gguf:Q4_0"]
