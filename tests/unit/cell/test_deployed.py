"""The as-deployed columns against a by-hand merge: a trained micro cell's adapter (adapter.safetensors) added to the
base loaded from disk, W + s·B·A, evaluated; then each planned weight of that merged model quantized here with the
format's own quantizer (`formats.quantize`; for bnb NF4, the fake NF4 that reproduces bitsandbytes bit for bit) and
evaluated again — the row's `merged_eval_loss` and `merged_requant_eval_loss` must be those numbers."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS
from qlbench.study import config as studylib
from qlbench.study.grid import Cell


def _study():
    return studylib.load(studylib.read_config(CONFIGS), "micro")


@pytest.mark.parametrize("bits,overrides", [(3, {"format": "int"}), (4, {"format": "nf", "backend": "bnb"})],
                         ids=["fake-int3", "bnb-nf4"])
def test_merged_columns_are_a_by_hand_merge(tmp_path, micro_resources, monkeypatch, bits, overrides):
    from transformers import AutoModelForCausalLM

    from qlbench.cell.context import begin
    from qlbench.cell.load import load
    from qlbench.cell.run import run
    from qlbench.quant.formats import out_in, quantize

    monkeypatch.chdir(micro_resources.parent)
    st = _study()
    settings = studylib.cell_settings(st, {"steps": 6, "lr": 2e-2, **overrides}, bits)
    cell = Cell("micro-gpt2", bits, 4, "all", 0)
    row = run(st, cell, tmp_path / "cell", settings, 1)
    assert pl.read_parquet(tmp_path / "cell/row.parquet")["merged_requant_eval_loss"][0] == row[
        "merged_requant_eval_loss"]
    ctx = begin(st, cell, tmp_path / "data", settings, 1)  # the same eval data, loaded the cell's way
    base = load(ctx)

    def loss(model):
        return ctx.task.eval_loss(model, base.data.eval, ctx.settings.train.batch_size, ctx.device, None)

    adapter = load_file(tmp_path / "cell/adapter.safetensors")
    merged = AutoModelForCausalLM.from_pretrained(micro_resources / "models/micro-gpt2")
    scaling = row["lora_alpha"] / cell.rank
    prefix, n = "base_model.model.", 0
    with torch.no_grad():
        for key, a in adapter.items():
            if key.endswith(".lora_A.weight"):
                name = key.removeprefix(prefix).removesuffix(".lora_A.weight")
                b = adapter[key.replace("lora_A", "lora_B")]
                module = merged.get_submodule(name)  # GPT-2's Conv1D: (in, out)
                module.weight.copy_(module.weight + (scaling * b @ a).t())
                n += 1
    assert n == 2  # c_attn of both blocks
    by_hand_merged = loss(merged)
    q = ctx.settings.quant
    with torch.no_grad():
        for name in [m for m, _ in merged.named_modules() if m.endswith(("c_attn", "c_proj", "c_fc"))]:
            module = merged.get_submodule(name)
            rows = out_in(module, module.weight)
            module.weight.copy_(out_in(module, quantize(rows, bits, q.format, q.symmetric, q.group_size,
                                                        q.double_quant)))
    by_hand_requant = loss(merged)
    assert row["merged_eval_loss"] == pytest.approx(by_hand_merged, rel=1e-6, abs=0)
    assert row["merged_requant_eval_loss"] == pytest.approx(by_hand_requant, rel=1e-5, abs=0)
    # three different models: unmerged QLoRA, merged at 16 bits, merged and quantized again
    assert len({round(row[k], 7) for k in ("eval_loss", "merged_eval_loss", "merged_requant_eval_loss")}) == 3
    assert row["merged_s"] > 0


def test_a_cell_with_nothing_quantized_has_nan_merged_columns():
    from qlbench.cell import deployed
    from qlbench.cell.quantize import Quantized
    from qlbench.study.settings import tree

    class Ctx:
        settings = tree()

    assert deployed.skipped(Ctx, Quantized(plan={}, stats=[], weight_mem_mb=0.0)) == "nothing in the base is quantized"
    assert deployed.skipped(Ctx, Quantized(plan={"m": 4}, stats=[], weight_mem_mb=0.0)) is None
    Ctx.settings = tree(act_bits=8)
    assert deployed.skipped(Ctx, Quantized(plan={"m": 4}, stats=[], weight_mem_mb=0.0)) is not None
    Ctx.settings, Ctx.log = tree(), __import__("logging").getLogger("test")
    out = deployed.evaluate(Ctx, None, None, Quantized(plan={}, stats=[], weight_mem_mb=0.0))
    assert set(out) == set(deployed.LOSSES) and all(math.isnan(v) for v in out.values())


def test_rows_written_before_the_merged_columns_still_read_as_finished(tmp_path):
    from qlbench import results
    from qlbench.study import finished

    old = {k: None for k in results.ROW_SCHEMA} | {"study": "s", "model": "m", "bits": 4, "rank": 4, "mask": "all",
                                                   "seed": 0, "status": "ok", "eval_loss": 5.0}
    new = old | {"seed": 1, "merged_eval_loss": 5.1, "merged_requant_eval_loss": 5.2, "init_error": 0.3}
    files = []
    for i, row in enumerate((old, new)):
        results.write_parquet(results.row_frame(row), tmp_path / f"{i}.parquet")
        files.append(str(tmp_path / f"{i}.parquet"))
    corrupt: dict = {}
    table = finished.read_many(files, corrupt, finished.row_required()).sort("seed")
    assert corrupt == {} and table.height == 2
    assert table["merged_eval_loss"].to_list() == [None, 5.1] and table.schema["init_error"] == pl.Float64
