"""Hostile config values: study, model and dataset keys and mask values that try to leave the results or resources
folder (`..`, absolute paths), reach a shell (metacharacters) or overflow a file name are refused in one line before
anything is written or run; `trust_remote_code` is set only where a model entry says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from qlbench.data import models
from qlbench.errors import QlbenchError
from qlbench.study import config as studylib

from conftest import BIN, CONFIG_ARGS, snakemake

LONG = "m" * 300


def hostile(repo_config: dict, where: str, value: str) -> dict:
    """The repo's config with micro's study, its model or its dataset renamed to `value`, or a mask set to it."""
    config = json.loads(json.dumps(repo_config))
    micro = config["studies"]["micro"]
    if where == "study":
        config["studies"] = {value: micro}
        config["study"] = value
    elif where == "model":
        config["models"][value] = config["models"].pop("micro-gpt2")
        micro["models"] = [value]
    elif where == "dataset":
        config["datasets"][value] = config["datasets"].pop(micro["dataset"])
        micro["dataset"] = value
    else:
        micro["masks"] = ["all", value]
    if where != "study":
        config["studies"] = {"micro": micro}
        config["study"] = "micro"
    return config


CASES = [
    ("study", "../../escaped"), ("study", "/tmp/qlbench-escaped"), ("study", "x; touch pwned"), ("study", LONG),
    ("model", "../escaped"), ("model", "/tmp/qlbench-escaped"), ("model", "m$(touch pwned)"), ("model", LONG),
    ("model", "a b"), ("dataset", "../../data"), ("dataset", "d`touch pwned`"), ("dataset", LONG),
    ("mask", "../../escaped"), ("mask", "all;touch pwned"),
]


@pytest.mark.parametrize("where,value", CASES, ids=[f"{w}-{v[:20]}" for w, v in CASES])
def test_hostile_name_is_refused_in_one_line(tmp_path, repo_config, where, value):
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(hostile(repo_config, where, value)))
    out = subprocess.run([BIN / "qlbench", "grid", "-c", config], cwd=tmp_path, text=True, capture_output=True,
                         timeout=60)
    assert out.returncode != 0 and out.stdout == "", out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert repr(value[:60]) in lines[0] or "mask" in lines[0], lines[0]
    assert os.listdir(tmp_path) == ["hostile.yaml"] and not os.path.exists("/tmp/qlbench-escaped")


@pytest.mark.workflow
def test_snakemake_refuses_a_hostile_model_before_any_job(tmp_path, repo_config):
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(hostile(repo_config, "model", "../../escaped;touch pwned")))
    dry = snakemake(tmp_path, "--cores", "1", configfile=config)
    assert dry.returncode != 0
    assert dry.stdout.strip() == ("qlbench: models: model '../../escaped;touch pwned': a name, not a path "
                                  "(no '/', '\\' or '..')"), dry.stdout
    assert sorted(os.listdir(tmp_path)) in (["hostile.yaml"], [".snakemake", "hostile.yaml"])
    assert not (tmp_path.parent / "escaped").exists()


def test_paths_made_from_names_refuse_them_too():
    # `qlbench prepare MODEL` takes the model from the command line: the folder it builds refuses a path
    for bad in ("../x", "/abs", "a;b", LONG, ""):
        with pytest.raises(QlbenchError):
            models.base_dir("resources", bad)
    assert str(models.base_dir("resources", "micro-gpt2")) == "resources/models/micro-gpt2"
    out = subprocess.run([BIN / "qlbench", "prepare", *CONFIG_ARGS, "../../escaped"],
                         text=True, capture_output=True, timeout=60)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_trust_remote_code_only_where_the_entry_says_true(repo_config):
    assert models.remote_code({"source": "hub"}) is False
    assert models.remote_code({"source": "hub", "trust_remote_code": True}) is True
    config = json.loads(json.dumps(repo_config))
    config["models"]["micro-gpt2"]["trust_remote_code"] = "yes"
    with pytest.raises(QlbenchError, match="trust_remote_code: 'yes' is not of type 'boolean'"):
        studylib.load(config, "micro")


EVIL = """from pathlib import Path
Path(__file__).resolve()  # imported at all: the marker below says so
Path({marker!r}).write_text("ran")
from transformers import GPT2LMHeadModel


class EvilModel(GPT2LMHeadModel):
    pass
"""


def test_a_model_folder_s_own_code_never_runs_unless_the_entry_says_so(tmp_path, micro_resources, monkeypatch):
    """A local model folder that ships Python (`auto_map` in its config.json): loading it with a plain entry uses
    transformers' own GPT-2 and never imports the folder's code; `trust_remote_code: true` does."""
    folder = tmp_path / "evil-model"
    shutil.copytree(micro_resources / "models/micro-gpt2", folder)
    marker = tmp_path / "evil-ran"
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    spec = {"source": "path", "name": str(folder), "arch": "gpt2", "n_layer": 2}
    model, _ = models.load(spec, "evil", "resources")
    assert not marker.exists() and type(model).__name__ == "GPT2LMHeadModel"
    model, _ = models.load({**spec, "trust_remote_code": True}, "evil", "resources")
    assert marker.exists() and type(model).__name__ == "EvilModel"
