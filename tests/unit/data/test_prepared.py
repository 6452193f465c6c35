"""A cell's prepared data is made once per (model, dataset, data settings) and read back memory-mapped: the same
tensors as preparing it afresh; another setting that changes the data makes another file, a training setting not."""

import torch

from qlbench.data import prepared
from qlbench.study import config as studylib


def test_key_follows_what_the_data_depends_on(repo_config):
    settings = studylib.load(repo_config, "micro").settings
    key = prepared.key(repo_config, "micro-gpt2", settings, None)
    assert prepared.key(repo_config, "micro-gpt2", {**settings, "lr": 0.5, "steps": 3, "format": "nf"}, None) == key
    assert prepared.key(repo_config, "micro-gpt2", {**settings, "seq_len": 32}, None) != key
    assert prepared.key(repo_config, "micro-gpt2", {**settings, "new_setting": 1}, None) != key  # unknown: in the key
    assert prepared.key(repo_config, "micro-gpt2", settings, 100) != key
    assert prepared.key(repo_config, "micro-gpt2", {**settings, "dataset": "trivia"}, None) != key


def test_a_new_format_remakes_the_files(repo_config, monkeypatch):
    settings = studylib.load(repo_config, "micro").settings
    key = prepared.key(repo_config, "micro-gpt2", settings, None)
    monkeypatch.setattr(prepared, "FORMAT", prepared.FORMAT + 1)
    assert prepared.key(repo_config, "micro-gpt2", settings, None) != key


def test_cached_makes_once_and_reads_the_same_tensors(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return 7, {"train": torch.arange(12).view(3, 4), "examples": ["a", "b"]}

    first = prepared.cached(tmp_path, "x", make)
    second = prepared.cached(tmp_path, "x", make)
    assert calls == [1] and second[0] == 7 and second[1]["examples"] == ["a", "b"]
    assert torch.equal(first[1]["train"], second[1]["train"]) and second[1]["train"].dtype == torch.long
    (tmp_path / "x.pt").write_bytes(b"damaged")
    assert prepared.cached(tmp_path, "x", make)[0] == 7 and calls == [1, 1]  # made again, not trusted
