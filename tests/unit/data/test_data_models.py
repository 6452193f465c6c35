"""Datasets from local files in the three formats, the offline chatterbot QA, and hub names that fail at once.
No test opens a network connection: the hub probe is replaced where it would run."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from qlbench.data import datasets_io, examples as data, hub, models
from qlbench.errors import QlbenchError

from conftest import REPO

DATA = REPO / "tests" / "data"


def test_dialogue_jsonl_becomes_consecutive_turn_pairs():
    train, held_out = data.load_examples({"source": "path", "name": str(DATA / "dialogue.jsonl"),
                                          "format": "dialogue", "eval_fraction": 0.2}, "dd")
    pairs = train + held_out
    assert len(pairs) == 3 + 2 + 1 + 2 and len(held_out) == 2
    assert data.Example("What would you like to drink?", "A cup of tea, please.") in pairs
    assert all(e.answers == () for e in pairs)


def test_instruction_json_uses_instruction_input_and_output():
    examples = datasets_io.examples({"source": "path", "name": str(DATA / "instruction.json"),
                                     "format": "instruction"}, "alpaca", "train")
    assert len(examples) == 5
    first = examples[0]
    # Alpaca's template: the input section only when there is an input; the response on the line after its header
    assert first.text == "### Instruction:\nGive a synonym for the word.\n\n### Input:\nhappy\n\n### Response:\nGlad."
    assert first.response == "Glad."
    assert examples[1].text == ("### Instruction:\nName the largest planet in the solar system.\n\n"
                                "### Response:\nJupiter.")


def test_max_examples_takes_a_subset_before_the_split():
    """QLoRA's diagnostic: the first 1,000 examples, 90/10; here the first 4 of 5, 75/25."""
    spec = {"source": "path", "name": str(DATA / "instruction.json"), "format": "instruction", "eval_fraction": 0.25}
    train, held_out = data.load_examples({**spec, "max_examples": 4}, "alpaca")
    assert len(train) == 3 and len(held_out) == 1
    assert {e.response for e in train + held_out} == {"Glad.", "Jupiter.", "Bonjour.", "42"}  # not the 5th


def test_dialogue_as_one_example_per_dialogue():
    spec = {"source": "path", "name": str(DATA / "dialogue.jsonl"), "format": "dialogue"}
    dialogues = datasets_io.examples({**spec, "sample": "dialogue"}, "dd", "train")
    pairs = datasets_io.examples(spec, "dd", "train")
    assert len(dialogues) == 4 and len(pairs) == 3 + 2 + 1 + 2
    assert dialogues[1] == data.Example("What would you like to drink?\nA cup of tea, please.", "Milk or lemon?")
    assert dialogues[1].text == "What would you like to drink?\nA cup of tea, please.\nMilk or lemon?"


def test_a_script_only_hub_dataset_loads_its_parquet_export(monkeypatch):
    """DailyDialog's repository holds only daily_dialog.py; datasets >= 4 refuses scripts, so the hub's parquet
    conversion (branch refs/convert/parquet) is read instead. The cache is stood in for by tests/data folders."""
    root = DATA / "script_only_hub"
    snapshots = {None: root / "main", hub.PARQUET_EXPORT: root / "parquet"}
    asked = []

    def cached(repo_id, repo_type="model", revision=None):
        asked.append((repo_id, repo_type, revision))
        return str(snapshots[revision])

    monkeypatch.setattr(hub, "cached", cached)
    spec = {"source": "hub", "name": "li2017dailydialog/daily_dialog", "format": "dialogue", "eval_split": "validation"}
    train, held_out = data.load_examples(spec, "dailydialog")
    assert len(train) == 3 + 2 + 1 and len(held_out) == 2  # the export's train and validation splits
    assert data.Example("The train is late again.", "How long do we have to wait?") in train
    assert ("li2017dailydialog/daily_dialog", "dataset", hub.PARQUET_EXPORT) in asked
    assert datasets_io.script_only(["daily_dialog.py", "README.md", ".gitattributes"])
    assert not datasets_io.script_only(["loader.py", "data/train-00000-of-00001.parquet"])


def test_qa_parquet_keeps_every_distinct_answer():
    examples = datasets_io.examples({"source": "path", "name": str(DATA / "qa.parquet"), "format": "qa"},
                                    "squad", "train")
    assert len(examples) == 4
    rhine, _, curie, _ = examples
    assert rhine.prompt.startswith("Context: The Rhine rises") and rhine.prompt.endswith(
        "Question: Where does the Rhine rise?\nAnswer:")
    assert rhine.response == "in the Swiss Alps" and rhine.answers == ("in the Swiss Alps", "the Swiss Alps")
    assert curie.answers == ("Warsaw", "in Warsaw")  # duplicates of SQuAD's annotators collapse


def test_a_folder_of_files_and_format_mismatches(tmp_path):
    import shutil

    for i in range(2):
        shutil.copy(DATA / "instruction.json", tmp_path / f"part{i}.json")
    assert len(datasets_io.examples({"source": "path", "name": str(tmp_path), "format": "instruction"}, "x",
                                    "train")) == 10
    with pytest.raises(QlbenchError, match="needs context, question and answers"):
        datasets_io.examples({"source": "path", "name": str(DATA / "instruction.json"), "format": "qa"}, "x", "train")
    with pytest.raises(QlbenchError, match="no such file"):
        data.load_examples({"source": "path", "name": str(DATA / "missing.json"), "format": "qa"}, "x")


def test_chatterbot_trivia_is_offline_qa():
    train, held_out = data.load_examples({"source": "chatterbot", "topics": ["trivia"], "format": "qa",
                                          "eval_fraction": 0.15}, "trivia")
    assert len(train) + len(held_out) == 260  # one malformed entry (a bare string) is skipped, not split into letters
    assert min(len(e.prompt) for e in train + held_out) > 10
    assert all(e.answers == (e.response,) for e in train + held_out)
    with pytest.raises(QlbenchError, match="unknown"):
        data.chatterbot_pairs(["no-such-topic"])


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_uncached_hub_model_fails_at_once_when_offline(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _no_network)
    t0 = time.perf_counter()
    with pytest.raises(QlbenchError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as e:
        models.load({"source": "hub", "name": "someone/no-such-model", "arch": "gpt2"}, "nope", "resources")
    assert time.perf_counter() - t0 < 5 and "\n" not in str(e.value)


def test_uncached_hub_name_fails_at_once_when_the_hub_is_unreachable(empty_hf_cache, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout=None: calls.append(addr) or _no_network())
    with pytest.raises(QlbenchError, match="huggingface.co:443 cannot be reached"):
        hub.resolve("someone/no-such-model", "model 'nope'")
    with pytest.raises(QlbenchError, match="dataset 'sq'.*cannot be reached"):
        datasets_io.load_records({"source": "hub", "name": "someone/no-such-data", "format": "qa"}, "sq", "train")
    assert calls == [("huggingface.co", 443)] * 2


def test_a_cached_hub_model_loads_offline(empty_hf_cache, monkeypatch, micro_resources):
    """A hub name present in the cache is used from there, without the network."""
    import shutil

    snap = Path(empty_hf_cache / "hub/models--someone--micro/snapshots/0123456789abcdef")
    shutil.copytree(micro_resources / "models/micro-gpt2", snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs/main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _no_network)
    model, tokenizer = models.load({"source": "hub", "name": "someone/micro", "arch": "gpt2"}, "m", "resources")
    assert model.config.n_layer == 2 and tokenizer.eos_token_id is not None


def test_smollm2_needs_preparing_first(tmp_path):
    with pytest.raises(QlbenchError, match="qlbench prepare smollm2"):
        models.load({"source": "smollm2", "arch": "llama", "n_layer": 30}, "smollm2", str(tmp_path))


def _no_network(*args, **kwargs):
    raise OSError("tests never open network connections")


def test_base_dtype_is_bf16_on_a_gpu_and_fp32_on_a_cpu_unless_named(micro_resources):
    import torch

    from qlbench.cell.load import base_dtype
    from qlbench.quant.memory import weight_mem_mb

    assert base_dtype("auto", torch.device("cpu")) is torch.float32  # the CPU studies' numbers as they were
    assert base_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert base_dtype("float16", torch.device("cpu")) is torch.float16
    spec = {"source": "path", "name": str(micro_resources / "models" / "micro-gpt2")}
    fp32, _ = models.load(spec, "micro", "unused", dtype=torch.float32)
    bf16, _ = models.load(spec, "micro", "unused", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert weight_mem_mb(bf16, []) * 2 == weight_mem_mb(fp32, [])  # a real 16-bit reference: half the bytes
    as_saved, _ = models.load(spec, "micro", "unused")
    assert all(torch.equal(a, b) for a, b in zip(as_saved.state_dict().values(), fp32.state_dict().values()))
