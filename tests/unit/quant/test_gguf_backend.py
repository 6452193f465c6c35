"""The GGUF backend against gguf-py itself: each type's rounded weight is exactly `gguf.quants.dequantize` of
`gguf.quants.quantize` of the weight (0 difference), a width picks its documented type, a row the type's block does
not divide gets llama.cpp's fallback and says so, and the `deploy` setting parses, refuses in one line and leaves
identities alone when unset."""

from __future__ import annotations

import pytest
import torch

from qlbench.errors import QlbenchError
from qlbench.study.settings import identity, tree

gguf = pytest.importorskip("gguf")

from qlbench.quant import gguf as qg  # noqa: E402
from qlbench.quant.formats import out_in  # noqa: E402

TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16")


def _tiny():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=64, n_layer=1, n_head=2)).eval()


def _names(model):
    return [n for n, _ in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))]


def _gguf_own(rows: torch.Tensor, name: str) -> torch.Tensor:
    t = gguf.GGMLQuantizationType[name]
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(rows.float().numpy(), t), t).copy())


@pytest.mark.parametrize("name", TYPES)
def test_each_type_is_gguf_pys_own_rounding_exactly(name):
    model = _tiny()
    originals = {n: out_in(model.get_submodule(n), model.get_submodule(n).weight.detach()).clone() for n in _names(model)}
    rows = qg.deploy(model, {n: (16, name) for n in originals}, tree())
    assert {r["type"] for r in rows} == {name}
    for n, w in originals.items():
        mine = out_in(model.get_submodule(n), model.get_submodule(n).weight.detach())
        assert torch.equal(mine, _gguf_own(w, name)), n  # 0 difference
        if name != "F16" and name != "BF16":
            assert not torch.equal(mine, w)  # it did round


def test_a_broken_scale_is_seen_by_the_parity_check():
    """The check above can fail: one block's float16 scale changed in gguf-py's bytes gives other weights."""
    w = torch.randn(4, 64)
    t = gguf.GGMLQuantizationType.Q4_0
    data = gguf.quants.quantize(w.numpy(), t)
    data[0, 0] ^= 0x01  # the first block's scale (its first two bytes), one bit off
    broken = torch.from_numpy(gguf.quants.dequantize(data, t).copy())
    assert not torch.equal(broken, _gguf_own(w, "Q4_0"))


@pytest.mark.parametrize("symmetric, expected", [(True, {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}),
                                                 (False, {4: "Q4_1", 5: "Q5_1", 8: "Q8_0"})])
def test_a_width_picks_its_documented_type(symmetric, expected):
    model = _tiny()
    names = _names(model)
    plan = {names[0]: 4, names[1]: 5, names[2]: 8}
    stats = qg.apply(model, plan, tree(backend="gguf", symmetric=symmetric))
    assert {r["module"]: r["format"] for r in stats} == {n: expected[b] for n, b in plan.items()}
    assert all(r["weight_bytes"] > 0 for r in stats)
    with pytest.raises(QlbenchError, match="no type gguf-py can quantize at 3 bits"):
        qg.type_for(3)


def test_a_row_the_block_does_not_divide_falls_back_as_llama_cpp_does():
    assert qg.fitted("Q4_0", 64) == "Q4_0"
    assert qg.fitted("Q4_0", 48) == "F16"  # llama.cpp refuses legacy types here; qlbench keeps the row in F16
    assert qg.fitted("Q4_K", 64) == "Q5_0" and qg.fitted("Q6_K", 48) == "F16" and qg.fitted("Q5_K", 256) == "Q5_K"
    data, deq, got = qg.quantized(torch.randn(3, 48), "Q8_0")
    assert got == "F16" and data.dtype.name == "float16"


def test_gguf_py_still_cannot_quantize_the_k_quants():
    """Why Q2_K..Q6_K are not declared: if this fails, gguf-py learned them and the backend can declare them."""
    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(torch.randn(2, 256).numpy(), gguf.GGMLQuantizationType.Q4_K)


def test_the_deploy_setting_parses_refuses_and_stays_out_of_unset_identities():
    from qlbench.study import deploy, masks

    lay = masks.layout("gpt2", 2)
    d = deploy.parse({"format": "gguf:Q4_0", "layers": {"b0": "Q8_0", "b1.mlp": "16"}})
    choices = d.choices({}, lay)
    assert choices["transformer.h.0.mlp.c_fc"] == (16, "Q8_0") and choices["transformer.h.1.attn.c_attn"] == (16, "Q4_0")
    assert "transformer.h.1.mlp.c_fc" not in choices  # 16: left alone
    assert deploy.parse("gguf").choices({"transformer.h.0.attn.c_attn": 4}, lay) == {
        "transformer.h.0.attn.c_attn": (4, None)}
    for bad, says in (("gguf:Q4_K_M", "no preset 'Q4_K_M'"), ("fake:Q4_0", "not a deploy format")):
        with pytest.raises(QlbenchError, match=says):
            deploy.parse(bad)
    assert "deploy" not in identity({"deploy": None, "steps": 40})
    assert identity({"deploy": "gguf:Q4_0", "steps": 40})["deploy"] == "gguf:Q4_0"


@pytest.mark.parametrize("value, says", [
    ("gguf:Q4_K_M", "studies.x.deploy 'gguf:Q4_K_M': gguf has no preset 'Q4_K_M'"),
    ("hqq:Q4_0", "'hqq' is not a deploy format"),
    ({"format": "gguf", "layers": {"b9": "Q8_0"}}, "studies.x.deploy layers: mask 'b9'"),
    (["gguf:Q8_0", {"format": "gguf"}], "deploy"),  # a sweep names formats, not per-layer maps (the schema)
])
def test_a_bad_deploy_is_one_line_before_any_job(value, says):
    from conftest import full_config
    from qlbench.study import config as studylib

    config = full_config()
    config["studies"]["x"] = {**config["studies"]["micro"], "deploy": value}
    with pytest.raises(QlbenchError, match=says.replace("(", r"\(").replace("[", r"\[")):
        studylib.load(config, "x")
    config["studies"]["x"]["deploy"] = ["gguf:Q8_0", "gguf:Q4_0"]
    assert studylib.load(config, "x").settings["deploy"] == ["gguf:Q8_0", "gguf:Q4_0"]
