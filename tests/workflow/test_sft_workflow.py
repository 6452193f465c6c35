"""Task sft as a new user runs it: a conversational JSONL and a prompt-completion JSONL, each as a local file and as
a `datasets.save_to_disk` folder, with a local model folder, through `snakemake --profile profiles/local
--configfile mine.yaml`, no conversion; a bad record stops the workflow before any job with one line."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from conftest import REPO, snakemake, write_config

PAIRS = [("Sky colour?", "Blue."), ("Two and three?", "Five."), ("Say hi.", "Hi!"), ("Big planet?", "Jupiter."),
         ("Cold season?", "Winter."), ("Cat sound?", "Meow.")]
CHATS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS] * 6
COMPLETIONS = [{"prompt": f"Q: {q}\nA:", "completion": f" {a}"} for q, a in PAIRS] * 6


def mine(tmp_path, micro_resources, records: list[dict], fmt: str, saved: bool, **settings) -> dict:
    folder = tmp_path / "my-model"
    shutil.copytree(micro_resources / "models" / "micro-gpt2", folder)  # a plain HF folder: config, weights, tokenizer
    if saved:
        from datasets import Dataset

        data = tmp_path / "my-data"
        Dataset.from_list(records).save_to_disk(str(data))
    else:
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {
        "study": "mine",
        "models": {"my-model": {"source": "path", "name": str(folder), "arch": "gpt2", "n_layer": 2}},
        "datasets": {"my-data": {"source": "path", "name": str(data), "format": fmt, "eval_fraction": 0.25}},
        "studies": {"mine": {"models": ["my-model"], "bits": [16, 4], "ranks": [4], "masks": ["all"], "seeds": [0],
                             "dataset": "my-data", "task": "sft", "steps": 6, "batch_size": 4, "seq_len": 64,
                             **settings}},
    }


RUNS = [("conversational", CHATS, False), ("conversational", CHATS, True),
        ("prompt_completion", COMPLETIONS, False), ("prompt_completion", COMPLETIONS, True)]


@pytest.mark.workflow
@pytest.mark.parametrize("fmt,records,saved", RUNS, ids=["chat-jsonl", "chat-saved", "completion-jsonl",
                                                          "completion-saved"])
def test_chat_and_completion_data_run_end_to_end_through_snakemake(tmp_path, micro_resources, fmt, records, saved):
    config = write_config(tmp_path / "mine.yaml", mine(tmp_path, micro_resources, records, fmt, saved))
    run = snakemake(tmp_path, "--cores", "2", "--profile", str(REPO / "profiles/local"), configfile=config)
    assert run.returncode == 0, run.stdout[-3000:]
    cells = pl.read_parquet(tmp_path / "results/mine/cells.parquet")
    assert sorted(cells["bits"].to_list()) == [4, 16] and (cells["status"] == "ok").all()
    assert (cells["task"] == "sft").all() and cells["eval_loss"].is_finite().all()
    assert (cells["train_examples"] == 27).all()  # 36 records, a quarter held out: this file was read
    settings = json.loads(cells["settings_json"][0])
    assert settings["chat_template"].startswith("chatml:")  # the micro tokenizer has none: ChatML, on the row
    before = dict(zip(cells["bits"], cells["eval_loss_before"]))
    assert before[4] != before[16]
    generations = pl.read_parquet(next((tmp_path / "results/mine").rglob("generations.parquet")))
    assert len(generations) == 9 and set(generations["reference"]) <= {a for _, a in PAIRS}


BAD = [
    ("no messages", "conversational", {"text": "hi"}, {}, "train.jsonl line 3: no field 'messages'"),
    ("unknown role", "conversational", {"messages": [{"role": "robot", "content": "beep"},
                                                     {"role": "assistant", "content": "x"}]}, {},
     "train.jsonl line 3: field 'messages': the chat template cannot render it: ChatML has no role robot"),
    ("too long", "conversational", {"messages": [{"role": "user", "content": "word " * 80},
                                                 {"role": "assistant", "content": "x"}]}, {},
     "train.jsonl line 3: "),
    ("no assistant turn", "conversational", {"messages": [{"role": "user", "content": "hello"}]},
     {"assistant_only_loss": True}, "train.jsonl line 3: field 'messages': no assistant turn"),
    ("empty completion", "prompt_completion", {"prompt": "Q: x\nA:", "completion": "  "}, {},
     "train.jsonl line 3: field 'completion' is empty"),
]


@pytest.mark.workflow
@pytest.mark.parametrize("name,fmt,bad,settings,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_record_stops_snakemake_in_one_line(tmp_path, micro_resources, name, fmt, bad, settings, message):
    good = CHATS if fmt == "conversational" else COMPLETIONS
    records = good[:2] + [bad] + good[2:]
    config = write_config(tmp_path / "mine.yaml", mine(tmp_path, micro_resources, records, fmt, False, **settings))
    run = snakemake(tmp_path, "-n", configfile=config)
    assert run.returncode != 0
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], run.stdout
    if name == "too long":
        assert "longer than max_length 64" in lines[0]
