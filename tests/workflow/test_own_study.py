"""A study of one's own, as the docs show it: a local Hugging Face model folder and a local JSONL of Alpaca records,
named in a file passed with --configfile, run end to end through the real snakemake; a missing or malformed one
stops before any job with one line naming the file and the field."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from conftest import REPO, snakemake, write_config

RECORDS = [("Name a colour of the sky.", "", "Blue."), ("Add the two numbers.", "2 and 3", "5"),
           ("Give a synonym for the word.", "happy", "Glad."), ("Translate to French.", "Good morning.", "Bonjour."),
           ("Say hello.", "", "Hello!"), ("Name the largest planet.", "", "Jupiter.")]


def own_study(tmp_path, micro_resources, model: dict | None = None, records: list[dict] | None = None) -> dict:
    folder = tmp_path / "my-model"
    shutil.copytree(micro_resources / "models" / "micro-gpt2", folder)  # a plain HF folder: config, weights, tokenizer
    data = tmp_path / "train.jsonl"
    rows = records or [{"instruction": i, "input": x, "output": o} for _ in range(8) for i, x, o in RECORDS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "study": "mine",
        "models": {"my-model": model or {"source": "path", "name": str(folder), "arch": "gpt2", "n_layer": 2}},
        "datasets": {"my-data": {"source": "path", "name": str(data), "format": "instruction", "eval_fraction": 0.25}},
        "studies": {"mine": {"models": ["my-model"], "bits": [16, 4], "ranks": [4], "masks": ["all"], "seeds": [0],
                             "dataset": "my-data", "steps": 10, "batch_size": 4, "seq_len": 64}},
    }


@pytest.mark.workflow
def test_a_local_model_folder_and_jsonl_run_end_to_end_through_snakemake(tmp_path, micro_resources):
    mine = write_config(tmp_path / "mine.yaml", own_study(tmp_path, micro_resources))
    run = snakemake(tmp_path, "--cores", "2", "--profile", str(REPO / "profiles/local"), configfile=mine)
    assert run.returncode == 0, run.stdout[-3000:]
    cells = pl.read_parquet(tmp_path / "results/mine/cells.parquet")
    assert sorted(cells["bits"].to_list()) == [4, 16] and set(cells["model"]) == {"my-model"}
    assert (cells["status"] == "ok").all() and cells["eval_loss"].is_finite().all()
    assert (cells["train_examples"] == 36).all()  # 48 records, a quarter held out: the file was read, not another
    # the loss before training differs between 4 and 16 bits: the copied weights were loaded and quantized
    before = dict(zip(cells["bits"], cells["eval_loss_before"]))
    assert before[4] != before[16]


BROKEN = [
    ("no config.json", lambda folder, data: (folder / "config.json").unlink(), "my-model/config.json: missing"),
    ("wrong n_layer", lambda folder, data: None, "config.json: n_layer is 2, but the model entry's n_layer is 3"),
    ("no weights", lambda folder, data: (folder / "model.safetensors").unlink(), "my-model: no weights"),
    ("record without output", lambda folder, data: data.write_text(json.dumps({"instruction": "x"}) + "\n"),
     "train.jsonl line 1: no field 'output' or 'response' (format instruction needs instruction, output/response)"),
    ("not JSON", lambda folder, data: data.write_text('{"instruction": "x", "output": "y"}\n{oops\n'),
     "train.jsonl line 2: not JSON"),
    ("no such file", lambda folder, data: data.unlink(), "dataset 'my-data': no such file or folder"),
]


@pytest.mark.workflow
@pytest.mark.parametrize("name,breaks,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_model_or_dataset_stops_snakemake_in_one_line(tmp_path, micro_resources, name, breaks, message):
    study = own_study(tmp_path, micro_resources)
    if name == "wrong n_layer":
        study["models"]["my-model"]["n_layer"] = 3
    breaks(tmp_path / "my-model", tmp_path / "train.jsonl")
    run = snakemake(tmp_path, "-n", configfile=write_config(tmp_path / "mine.yaml", study))
    assert run.returncode != 0
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], run.stdout
