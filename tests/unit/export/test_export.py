"""`qlbench export`: a mixed-precision recommendation (the integer program's, on a planted sensitivity table) becomes
an HQQ config, and the model loaded with it has, layer by layer, the recommended width: HQQLinear's own
`meta['nbits']` where quantized, the original layer where 16-bit. One width written wrong is caught."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import CliRunner

from conftest import CONFIG_ARGS
from qlbench.analysis import sensitivity
from qlbench.errors import QlbenchError
from qlbench.export import hqq as export_hqq, recommendation
from qlbench.study import masks as masklang
from qlbench.study.settings import tree

pytest.importorskip("hqq.core.quantize")
from hqq.core.quantize import HQQLinear  # noqa: E402

LAYOUT = masklang.layout("gpt2", 2)  # the micro study's micro-gpt2
X = torch.arange(24).reshape(2, 12) % 128


def _model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=128, n_positions=32)).eval()


def _recommendation() -> pl.DataFrame:
    """The integer program on a planted table: per module, a cost at 2, 3 and 4 bits that the late blocks' MLP and
    attention output tolerate and the first block's c_attn does not; a budget of 7 bits per weight (high_bits 16)."""
    cost = {"attn.c_attn": 0.05, "attn.c_proj": 0.004, "mlp.c_fc": 0.02, "mlp.c_proj": 0.002}
    numel = {"attn.c_attn": 64 * 192, "attn.c_proj": 64 * 64, "mlp.c_fc": 64 * 256, "mlp.c_proj": 256 * 64}
    rows, sizes = [], []
    for b in range(LAYOUT.n_layer):
        for m, c in cost.items():
            unit = f"b{b}.{m}"
            scale = 3.0 if b == 0 else 1.0
            rows += [{"model": "micro-gpt2", "n_train": None, "rank": 4, "bits": w, "level": "module", "mask": unit,
                      "degradation": scale * c * 2.0 ** (4 - w)} for w in (2, 3, 4)]
            sizes.append({"model": "micro-gpt2", "mask": unit, "numel": numel[m]})
    ranked = pl.DataFrame(rows, schema_overrides={"n_train": pl.Int64})
    return sensitivity.recommend_bits(ranked, pl.DataFrame(sizes), 7.0, 16)


def _expected(bit_map: dict) -> dict[str, int]:
    out = dict.fromkeys(LAYOUT.all_names(), 16)
    for unit, w in bit_map.items():
        for name in masklang.resolve(unit, LAYOUT):
            out[name] = w
    return out


def _export(tmp_path, rec: pl.DataFrame) -> Path:
    (tmp_path / "results/micro/sensitivity").mkdir(parents=True)
    rec.write_parquet(tmp_path / "results/micro/sensitivity/recommendation.parquet")
    from qlbench.cli import main

    res = CliRunner().invoke(main, ["export", *map(str, CONFIG_ARGS), "micro",
                                    "--results", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "results/micro/export/hqq_micro-gpt2_r4_module.json"
    assert str(out) in res.output and "llm-compressor" not in res.output  # the recipe is gone: see compressed-tensors
    return out


def test_exported_hqq_config_loads_with_the_recommended_width_in_every_layer(tmp_path):
    rec = _recommendation()
    row = rec.row(0, named=True)
    bit_map = json.loads(row["bit_map"])
    assert row["solver"] == "Optimal" and len(set(bit_map.values())) >= 3  # a real mix: 2/3/4 and 16
    want = _expected(bit_map)
    assert {w for w in want.values()} & {16} and {w for w in want.values()} - {16}
    path = _export(tmp_path, rec)
    cfg = json.loads(path.read_text())
    assert cfg["hqq_quant_config"] is None  # the blocks differ: hqq's tag-keyed config cannot hold this map
    model = export_hqq.load_hqq(_model(), path)
    got = export_hqq.layer_widths(model, LAYOUT.all_names())
    assert got == want
    for name, w in want.items():
        layer = model.get_submodule(name)
        if w == 16:
            assert type(layer).__name__ == "Conv1D"  # left as it was
        else:
            assert isinstance(layer, HQQLinear)
            assert (layer.meta["group_size"], layer.meta["axis"]) == (64, 1)  # the study's (defaults)
    assert type(model.lm_head) is torch.nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model(X).logits).all()

    # broken on purpose: one layer's width written wrong in the file, and the check sees it
    wrong = next(n for n, c in cfg["layers"].items() if c is not None)
    cfg["layers"][wrong]["nbits"] = 8 if cfg["layers"][wrong]["nbits"] != 8 else 4
    path.write_text(json.dumps(cfg))
    broken = export_hqq.layer_widths(export_hqq.load_hqq(_model(), path), LAYOUT.all_names())
    assert broken != want and {n for n in want if broken[n] != want[n]} == {wrong}


def test_a_map_the_same_in_every_block_loads_through_hqqs_quantize_model_as_layer_by_layer(tmp_path):
    """hqq's own `AutoHQQHFModel.quantize_model` (tag-keyed) and the per-layer HQQLinear path give the same layers and
    the same logits."""
    bit_map = {"b0.attn.c_attn": 4, "b1.attn.c_attn": 4, "b0.mlp.c_fc": 2, "b1.mlp.c_fc": 2}
    row = {"model": "micro-gpt2", "n_train": None, "rank": 4, "level": "module", "bit_map": json.dumps(bit_map)}
    cfg = export_hqq.config(row, LAYOUT, tree(group_size=32).quant, "micro")
    assert cfg["hqq_quant_config"] == {"transformer.h.attn.c_attn": {"nbits": 4, "group_size": 32, "axis": 1},
                                       "transformer.h.attn.c_proj": None,
                                       "transformer.h.mlp.c_fc": {"nbits": 2, "group_size": 32, "axis": 1},
                                       "transformer.h.mlp.c_proj": None}
    path = export_hqq.write(cfg, tmp_path / "hqq.json")
    by_tag = export_hqq.load_hqq(_model(), path, via="quantize_model")
    by_layer = export_hqq.load_hqq(_model(), path, via="layers")
    assert getattr(by_tag, "hqq_quantized", False) and not getattr(by_layer, "hqq_quantized", False)
    want = _expected(bit_map)
    assert export_hqq.layer_widths(by_tag, want) == export_hqq.layer_widths(by_layer, want) == want
    with torch.no_grad():
        a, b, full = by_tag(X).logits, by_layer(X).logits, _model()(X).logits
    assert torch.equal(a, b)
    assert (a - full).abs().mean() > 1e-4  # quantized, not two unquantized models


def test_export_refuses_widths_hqq_lacks_and_an_ambiguous_choice():
    row = {"model": "micro-gpt2", "rank": 4, "level": "module", "bit_map": json.dumps({"b0.mlp.c_fc": 5})}
    with pytest.raises(QlbenchError, match="HQQ cannot quantize to 5 bits"):
        export_hqq.config(row, LAYOUT, tree().quant)
    two = pl.DataFrame({"model": ["m", "m"], "rank": [4, 8], "level": ["module", "module"], "bit_map": ["{}", "{}"]})
    with pytest.raises(QlbenchError, match="2 recommendations match"):
        recommendation.pick(two)
    assert recommendation.pick(two, rank=8)["rank"] == 8


def test_a_count_budget_recommendation_exports_its_mask_at_its_bits():
    row = {"model": "micro-gpt2", "rank": 4, "level": "block", "mask": "b1", "bits": 4, "bit_map": None}
    cfg = export_hqq.config(row, LAYOUT, tree(high_bits=8).quant)
    assert {n: (c or {}).get("nbits") for n, c in cfg["layers"].items()} == {
        n: (4 if n.startswith("transformer.h.1.") else 8) for n in LAYOUT.all_names()}  # the rest at high_bits 8


def test_the_export_default_group_is_the_backends():
    from qlbench.quant import hqq as qhqq

    assert export_hqq.DEFAULT_GROUP == qhqq.DEFAULT_GROUP
