"""TRL's dataset formats read from every place a user keeps them, each record remembering where it came from; a bad
record is one line naming the file, the line and the field; the config refuses what task sft cannot mean."""

from __future__ import annotations

import copy
import json

import pytest

from qlbench.data import sft
from qlbench.errors import QlbenchError
from qlbench.study import chat_template, config as study

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}]}
PAIR = {"prompt": "Q: sky?\nA:", "completion": " Blue."}


def spec(path, fmt: str, **more) -> dict:
    return {"source": "path", "name": str(path), "format": fmt, **more}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_json_parquet_folder_and_saved_folders_read_the_same_records(tmp_path):
    import datasets

    rows = [CHAT, {"messages": CHAT["messages"][1:]}] * 3
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "arr").mkdir()
    (tmp_path / "arr" / "b.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    read = {where: [sft.record(o, r, "conversational", "d") for o, r in sft.rows(spec(tmp_path / where,
                                                                                       "conversational"), "d")]
            for where in ("a.jsonl", "arr", "c.parquet", "saved", "dict")}
    messages = {k: [r.messages for r in v] for k, v in read.items()}
    assert all(m == messages["a.jsonl"] for m in messages.values()) and len(messages["a.jsonl"]) == 6
    assert read["a.jsonl"][1].origin == f"{jsonl} line 2"
    assert read["arr"][1].origin.endswith("b.json record 2")
    assert read["c.parquet"][1].origin.endswith("c.parquet row 1")
    assert read["saved"][1].origin.endswith("saved row 1") and read["dict"][1].origin.endswith("dict/train row 1")


def test_older_formats_become_prompt_completion_records(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(10)])
    train, held_out = sft.load(spec(path, "instruction"), "d")
    assert len(train) == 9 and len(held_out) == 1
    assert train[0].kind == "prompt_completion" and train[0].prompt.startswith("### Instruction:\n")
    assert train[0].prompt.endswith("### Response:\n")  # causal_lm's layout: the prompt, then a newline


BAD_RECORDS = [
    ("no messages", "conversational", {"text": "hi"}, "line 2: no field 'messages' (format conversational"),
    ("not messages", "conversational", {"messages": "hi"}, "line 2: field 'messages': a list of messages"),
    ("empty completion", "prompt_completion", {"prompt": "Q", "completion": " "}, "line 2: field 'completion' is empty"),
    ("empty completion messages", "prompt_completion",
     {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": ""}]},
     "line 2: field 'completion' is empty"),
    ("mixed prompt and completion", "prompt_completion", {"prompt": [{"role": "user", "content": "Q"}],
                                                          "completion": "A"}, "line 2: fields 'prompt' and"),
    ("no text", "text", {"prompt": "x"}, "line 2: no field 'text'"),
]


@pytest.mark.parametrize("name,fmt,bad,message", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_a_bad_record_is_one_line_naming_file_line_and_field(tmp_path, name, fmt, bad, message):
    good = {"conversational": CHAT, "prompt_completion": PAIR, "text": {"text": "x"}}[fmt]
    path = write_jsonl(tmp_path / "mine.jsonl", [good, bad, good])
    with pytest.raises(QlbenchError) as err:
        sft.load(spec(path, fmt), "my-data")
    assert f"dataset 'my-data': {path} {message}" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tokenizer():
    from qlbench.data.examples import pydoc_text
    from qlbench.data.models import train_tokenizer

    tok = train_tokenizer(pydoc_text()[:50_000], 300)
    tok.chat_template = chat_template.CHATML
    return tok


TOKENIZED = [
    ("unknown role", {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]},
     sft.Options(256), "field 'messages': the chat template cannot render it: ChatML has no role robot"),
    ("too long", {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "x"}]},
     sft.Options(64), "tokens, longer than max_length 64"),
    ("no assistant turn", {"messages": [{"role": "user", "content": "hello"}]},
     sft.Options(256, assistant_only_loss=True), "field 'messages': no assistant turn"),
]


@pytest.mark.parametrize("name,row,opts,message", TOKENIZED, ids=[t[0] for t in TOKENIZED])
def test_a_record_the_template_or_max_length_refuses_is_one_line(tokenizer, name, row, opts, message):
    rec = sft.record("mine.jsonl line 7", row, "conversational", "my-data")
    with pytest.raises(QlbenchError) as err:
        sft.tokenize(tokenizer, rec, opts, "my-data")
    assert str(err.value).startswith("dataset 'my-data': mine.jsonl line 7: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_truncation_cuts_a_long_example_instead(tokenizer):
    rec = sft.record("l 1", {"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "word " * 60}]}, "conversational", "d")
    assert len(sft.tokenize(tokenizer, rec, sft.Options(64, truncation=True))["input_ids"]) == 64


def test_the_template_chosen_and_refused():
    assert chat_template.choose(None, "auto", "m") == ("chatml", chat_template.CHATML)
    assert chat_template.choose("{{ x }}", "auto", "m") == ("model", "{{ x }}")
    assert chat_template.choose("{{ x }}", "chatml", "m")[0] == "chatml"
    with pytest.raises(QlbenchError, match="template model: the tokenizer has no chat_template"):
        chat_template.choose(None, "model", "m")
    assert chat_template.has_generation_markers(chat_template.CHATML)
    assert not chat_template.has_generation_markers("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_a_model_folders_own_template_is_in_an_sft_cells_identity(tmp_path, repo_config):
    from qlbench.study import grid as gridlib

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    spec_ = {"source": "path", "name": str(folder), "arch": "gpt2", "n_layer": 2}
    assert chat_template.identity(spec_, "resources", "m", "auto") == \
        f"model:{chat_template.text_hash('{{ messages }}')}"
    (folder / "chat_template.jinja").write_text("{{ other }}")  # transformers prefers the .jinja file
    assert chat_template.identity(spec_, "resources", "m", "auto").endswith(chat_template.text_hash("{{ other }}"))
    config = copy.deepcopy(repo_config)
    config["studies"]["demo"]["task"] = "sft"
    loaded = study.load(config, "demo")
    identity, _ = study.cell_identity(loaded, gridlib.cells(loaded)[0])
    assert identity["chat_template"] == f"chatml:{chat_template.text_hash(chat_template.CHATML)}"


SFT_CONFIG_BAD = [
    ("trl format under causal_lm", lambda c, p: (c["datasets"].update(mine=spec(p, "conversational")),
                                                 c["studies"]["demo"].update(dataset="mine")),
     "studies.demo: dataset 'mine' has format conversational, which task sft trains on (set task: sft)"),
    ("sft setting under causal_lm", lambda c, p: c["studies"]["demo"].update(packing=False),
     "studies.demo: packing: settings of task sft; task is 'causal_lm'"),
    ("assistant-only on text", lambda c, p: (c["datasets"].update(mine=spec(p.with_name("t.jsonl"), "text")),
                                             c["studies"]["demo"].update(dataset="mine", task="sft",
                                                                         assistant_only_loss=True)),
     "studies.demo.assistant_only_loss: needs conversational data"),
    ("template model without one", lambda c, p: c["studies"]["demo"].update(task="sft", template="model"),
     "template model: the tokenizer has no chat_template"),
    ("a bad template value", lambda c, p: c["studies"]["demo"].update(task="sft", template="llama"),
     "'llama' is not one of ['auto', 'model', 'chatml']"),
]


@pytest.mark.parametrize("name,change,message", SFT_CONFIG_BAD, ids=[b[0] for b in SFT_CONFIG_BAD])
def test_what_task_sft_cannot_mean_is_one_line_at_config_check(tmp_path, repo_config, name, change, message):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT])
    write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    config = copy.deepcopy(repo_config)
    change(config, path)
    with pytest.raises(QlbenchError) as err:
        study.load(config, "demo")
    assert message in str(err.value) and "\n" not in str(err.value)
