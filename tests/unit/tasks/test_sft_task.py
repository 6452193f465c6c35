"""Task sft end to end on a tiny model: its data (rows of TRL's tokens and labels) reads back from the prepared-data
cache as data only, its loss covers the label tokens only, batches are a pure function of (seed, step), and its
generations answer the held-out prompts in the schema the cell writes."""

from __future__ import annotations

import pytest
import torch

from qlbench.data import prepared, sft as sftdata
from qlbench.data.example import Example
from qlbench.study.settings import tree
from qlbench.tasks import Batch, generate, packing, sft

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                       {"role": "assistant", "content": f"{a + b}."}]} for a in range(4) for b in range(3)]


@pytest.fixture(scope="module")
def tokenizer():
    from qlbench.data.examples import pydoc_text
    from qlbench.data.models import train_tokenizer

    return train_tokenizer(pydoc_text()[:50_000], 300)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2))


def records():
    rows = [sftdata.record(f"c.jsonl line {i + 1}", r, "conversational", "d") for i, r in enumerate(CHATS)]
    return rows[:9], rows[9:]


@pytest.mark.parametrize("packed", [True, False])
def test_data_reads_back_as_data_and_the_loss_covers_the_label_tokens(tmp_path, tokenizer, packed):
    settings = tree(task="sft", dataset="d", seq_len=256, batch_size=2, packing=packed, assistant_only_loss=True)
    train, held_out = records()
    types = (*prepared.dataclasses_in(sft), Batch, Example)
    data = prepared.cached(tmp_path, "x", lambda: sft.prepare(tokenizer, train, held_out, settings), types)
    again = prepared.cached(tmp_path, "x", lambda: pytest.fail("made twice"), types)  # read back, as data only
    assert isinstance(again, sft.Data) and torch.equal(again.train["labels"], data.train["labels"])
    assert again.template.startswith("chatml:") and again.counts[:2] == [9, 3]
    examples = sft.tokenized(tokenizer, train, settings, "d")
    # every label token of each example but its first (nothing before it predicts it) is one the loss covers
    assert packing.label_tokens(data.train) == sum(sum(x != -100 for x in e["labels"][1:]) for e in examples)
    assert (data.train.shape[0] < 9) == packed  # packed: several examples a row
    answers = {tokenizer.decode([t for t in e["labels"] if t != -100]) for e in examples}
    assert all(a.endswith("<|im_end|>") for a in answers)  # the assistant turns only, their end of turn included


def test_batches_are_a_pure_function_of_seed_and_step(tokenizer):
    settings = tree(task="sft", dataset="d", seq_len=96, batch_size=2)
    data = sft.prepare(tokenizer, *records(), settings)
    a, b = sft.batch_sampler(data.train, 2, 0), sft.batch_sampler(data.train, 2, 0)
    assert all(torch.equal(a(s)["input_ids"], b(s)["input_ids"]) for s in range(3))
    assert not torch.equal(a(0)["input_ids"], sft.batch_sampler(data.train, 2, 1)(0)["input_ids"]) or \
        data.train.shape[0] == 1


def test_loss_eval_loss_and_generations(tokenizer, model):
    settings = tree(task="sft", dataset="d", seq_len=96, batch_size=2, packing=False)
    data = sft.prepare(tokenizer, *records(), settings)
    device = torch.device("cpu")
    assert torch.isfinite(sft.loss(model, data.train[:2]))
    assert sft.eval_loss(model, data.eval, 2, device) > 0
    rows = sft.outputs(model, tokenizer, data, device)
    assert [r["reference"] for r in rows] == [c["messages"][1]["content"] for c in CHATS[9:]]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)  # the generation prompt
    frame = generate.frame({}, rows)
    assert len(frame) == 3 and set(frame["em"].to_list()) <= {0.0, 1.0}


def test_answer_stops_at_the_end_of_turn():
    assert sft.answer(" 5.<|im_end|>\n<|im_start|>user") == "5."


@pytest.mark.parametrize("only", [True, False])
def test_answer_loss_covers_the_answers_whatever_the_training_loss_covers(tokenizer, model, only):
    """Trained on the answers only, the answer loss is the eval loss (the same tokens); trained on every token, it
    covers the assistant turns alone: fewer tokens than the eval loss, the loss over exactly those."""
    settings = tree(task="sft", dataset="d", seq_len=96, batch_size=2, assistant_only_loss=only, template="chatml")
    data = sft.prepare(tokenizer, *records(), settings)
    device = torch.device("cpu")
    answer = sft.metrics(model, tokenizer, data, device)["answer_loss"]
    held_out = sft.tokenized(tokenizer, records()[1], tree(task="sft", dataset="d", seq_len=96,
                                                            assistant_only_loss=True), "d")
    by_hand = packing.eval_loss(model, packing.rows([(e["input_ids"], e["labels"]) for e in held_out], 96, 0, True),
                                2, device)
    assert answer == pytest.approx(by_hand, rel=1e-6)
    if only:
        assert answer == pytest.approx(sft.eval_loss(model, data.eval, 2, device), rel=1e-6)
    else:
        assert packing.label_tokens(data.answers) < packing.label_tokens(data.eval)
