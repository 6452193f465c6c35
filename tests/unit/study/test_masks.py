import re

import pytest

from qlbench.errors import QlbenchError
from qlbench.study.masks import expand, layout, resolve

GPT2 = layout("gpt2", 12)


def names(mask, lay=GPT2):
    return resolve(mask, lay)


def test_all_none_and_groups():
    assert len(names("all")) == 48
    assert names("none") == []
    assert names("attn") == [f"transformer.h.{i}.attn.{m}" for i in range(12) for m in ("c_attn", "c_proj")]
    assert len(names("mlp")) == 24 and all(".mlp." in n for n in names("mlp"))


def test_blocks_ranges_and_module_suffixes():
    assert names("b3") == [f"transformer.h.3.{m}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert len(names("b0-3")) == 16
    assert names("b9-11.mlp") == [f"transformer.h.{i}.mlp.{m}" for i in (9, 10, 11) for m in ("c_fc", "c_proj")]
    assert names("b0-3.attn.c_proj") == [f"transformer.h.{i}.attn.c_proj" for i in range(4)]
    assert names("mlp.c_fc") == [f"transformer.h.{i}.mlp.c_fc" for i in range(12)]


def test_unions_are_sets_in_model_order():
    union = names("b0-3.attn.c_proj+b9-11")
    assert len(union) == 4 + 12
    assert union == sorted(union, key=GPT2.all_names().index)
    assert names("b1+b1.mlp") == names("b1")


def test_llama_module_names():
    lay = layout("llama", 2)
    assert names("b1.attn", lay) == [f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"]
    assert names("b0.mlp.down_proj", lay) == ["model.layers.0.mlp.down_proj"]


@pytest.mark.parametrize("mask,message", [
    ("b99", "block 99 does not exist (blocks are b0-11)"),
    ("b3-1", "runs backwards"),
    ("b0.attn.q", "unknown module 'attn.q'; valid: attn, mlp, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"),
    ("everything", "unknown module 'everything'"),
    ("b0/mlp", "use letters, digits"),
    ("b0++b1", "empty term"),
])
def test_bad_masks_name_the_problem(mask, message):
    with pytest.raises(QlbenchError, match=re.escape(message)):
        names(mask)


def test_generated_families():
    lay = layout("gpt2", 4)
    assert expand({"each": "block"}, lay) == ["b0", "b1", "b2", "b3"]
    modules = expand({"each": "module"}, lay)
    assert len(modules) == 16 and modules[0] == "b0.attn.c_attn" and modules[-1] == "b3.mlp.c_proj"
    assert all(len(resolve(m, lay)) == 1 for m in modules)
