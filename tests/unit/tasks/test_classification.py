"""The classification task and its data against known answers: the offline topic set, padding and labels,
accuracy counted by hand, and a cell's saved adapter (LoRA + head) rebuilt into the same classifier."""

from __future__ import annotations

import types

import pytest
import torch

from qlbench.data import labelled
from qlbench.tasks import classification as task
from qlbench.study.settings import tree

TOPICS = {"source": "chatterbot", "format": "classification", "topics": ["ai", "emotion", "psychology", "trivia"],
          "per_class": 120, "eval_fraction": 0.2}


def test_offline_topic_set_labels_each_text_by_its_file_and_splits_disjointly():
    train, held_out = labelled.load(TOPICS, "chatterbot-topics")
    assert (len(train), len(held_out)) == (383, 96)  # 119 psychology texts (all it has) + 3 × 120, 20% held out
    assert {e.response for e in train} == set(TOPICS["topics"])
    assert not {e.prompt for e in train} & {e.prompt for e in held_out}
    again = labelled.load(TOPICS, "chatterbot-topics")
    assert again == (train, held_out)  # the split is a property of the dataset
    trivia = [e.prompt for e in train + held_out if e.response == "trivia"]
    assert "What is the name of the largest ocean on Earth?" in trivia or len(trivia) == 120


def test_hub_style_records_name_integer_labels_in_the_datasets_order():
    import datasets

    records = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]})
    spec = {"source": "path", "labels": ["World", "Sports", "Business"]}
    got = labelled.from_records(records, spec, "x")
    assert [e.response for e in got] == ["Business", "World", "Sports"]
    assert task.head_kwargs(spec)["id2label"] == {0: "Business", 1: "Sports", 2: "World"}  # sorted, as prepare


class Tok:
    """A whitespace tokenizer with ids by first sight; 0 is EOS/pad."""

    eos_token_id = pad_token_id = 0

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()] for t in texts]}


def examples(pairs):
    from qlbench.data.example import Example

    return [Example(t, y) for t, y in pairs]


def test_prepare_right_pads_and_numbers_labels_in_sorted_order():
    data = task.prepare(Tok(), examples([("a b c", "pos"), ("d", "neg")]), examples([("a b c d e", "neg")]),
                        tree(seq_len=4))
    assert data.labels == ["neg", "pos"]
    assert data.train["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert data.train["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert data.train["labels"].tolist() == [1, 0]
    assert data.eval["input_ids"].tolist() == [[1, 2, 3, 4]]  # cut at seq_len


def test_accuracy_is_counted_by_hand():
    data = task.prepare(Tok(), examples([("x", "a"), ("y", "b")]),
                        examples([("p", "a"), ("q", "b"), ("r", "b"), ("s", "a")]), tree(seq_len=4))

    class Fixed(torch.nn.Module):  # says label 1 ("b") for every text
        def forward(self, input_ids, attention_mask):
            return types.SimpleNamespace(logits=torch.tensor([[0.0, 1.0]]).repeat(input_ids.shape[0], 1))

    assert task.metrics(Fixed(), None, data, torch.device("cpu"))["accuracy"] == 0.5
    rows = task.outputs(Fixed(), None, data, torch.device("cpu"))
    assert [r["em"] for r in rows] == [0.0, 1.0, 1.0, 0.0]


def test_a_cells_adapter_rebuilds_the_same_classifier(tmp_path):
    """LoRA and the head saved as the cell saves them, loaded and merged by the attack's victim: the same logits."""
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from qlbench.attack.victim import classifier_from_lm, load_adapter
    from qlbench.cell import lora

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    head = {"num_labels": 3, "pad_token_id": 0}
    settings = tree(targets=["c_attn"], lora_alpha=16, lora_dropout=0.0, backend="fake")
    trained = lora.attach(classifier_from_lm(lm, head), 4, settings, "gpt2", task_type=task.PEFT_TASK,
                          head_modules=task.HEAD_MODULES)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if p.requires_grad:  # as if trained: LoRA's B and the head away from their start
                p.add_(torch.randn_like(p) * 0.3)
    save_file(lora.adapter_state(trained), str(tmp_path / "adapter.safetensors"))
    fresh = lora.attach(classifier_from_lm(lm, head), 4, settings, "gpt2", task_type=task.PEFT_TASK,
                        head_modules=task.HEAD_MODULES)
    x = torch.tensor([[5, 9, 2, 31, 7], [1, 2, 3, 0, 0]])
    with torch.no_grad():
        want = trained.eval()(input_ids=x).logits
        assert not torch.allclose(fresh.eval()(input_ids=x).logits, want, atol=1e-3)  # nothing loaded yet
        rebuilt = load_adapter(fresh, tmp_path / "adapter.safetensors", task.HEAD_MODULES)
        assert torch.allclose(rebuilt.eval()(input_ids=x).logits, want, atol=1e-5)
