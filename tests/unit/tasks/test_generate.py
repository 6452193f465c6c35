"""Greedy generation on the probe set, and EM/F1 with the SQuAD v1.1 answer normalization."""

from dataclasses import dataclass

import pytest

from qlbench.tasks import generate as gen, squad


@pytest.mark.parametrize("text, normalized", [
    ("The Cat", "cat"),  # articles go, case folds
    ("  Denver   Broncos ", "denver broncos"),  # whitespace collapses
    ("U.S.A.", "usa"),  # punctuation is removed, not replaced by spaces
    ("an apple, a pear and the plum!", "apple pear and plum"),
    ("theatre banana", "theatre banana"),  # articles only as whole words
    ("Saint-Denis", "saintdenis"),
    ("", ""),
])
def test_normalize_answer_matches_squad_v11(text, normalized):
    assert squad.normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
    assert squad.exact_match("the Denver Broncos", "Denver Broncos!") == 1.0
    assert squad.exact_match("Denver", "Denver Broncos") == 0.0
    # precision 2/3, recall 1 -> F1 0.8
    assert squad.f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # truth normalizes to "year 1998 in winter": both predicted tokens match, P 1, R 1/2 -> 2/3
    assert squad.f1("in 1998", "the year 1998 , in winter") == pytest.approx(2 / 3)
    assert squad.f1("cats", "dogs") == 0.0
    assert squad.f1("a", "the") == 0.0  # both normalize to nothing: SQuAD v1.1 scores that 0
    # repeated tokens count once per match (Counter intersection)
    assert squad.f1("the the cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_best_over_answers_and_answer_span():
    assert squad.best_over_answers(squad.f1, "Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert squad.best_over_answers(squad.exact_match, "Carolina", ["Denver Broncos", "Broncos"]) == 0.0
    assert squad.best_over_answers(squad.f1, "x", ()) is None
    assert gen.answer_span("\n  Paris \nand more") == "Paris"


@dataclass(frozen=True)
class QA:
    prompt: str
    response: str
    answers: tuple = ()


def _tiny():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from qlbench.data.examples import pydoc_text
    from qlbench.data.models import train_tokenizer

    tok = train_tokenizer(pydoc_text()[:60000], 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    return model, tok


def test_generation_is_greedy_batch_invariant_and_scored():
    import torch

    model, tok = _tiny()
    examples = [QA("What is the capital of France?", "Paris", ("Paris", "paris city")),
                QA("Name a colour", "red", ("red",)),
                QA("A much longer prompt that needs left padding when it shares a batch with short ones. " * 3, "x"),
                QA("hi", "hello")]
    cpu = torch.device("cpu")
    one = gen.generate(model, tok, examples, cpu, batch_size=1, max_new_tokens=8)
    four = gen.generate(model, tok, examples, cpu, batch_size=4, max_new_tokens=8)
    assert [r["output_ids"] for r in one] == [r["output_ids"] for r in four]  # left padding changes nothing
    for a, b in zip(one, four):
        assert a["hidden_mean"] == pytest.approx(b["hidden_mean"], abs=1e-4)
    assert all(0 < len(r["output_ids"]) <= 8 and tok.eos_token_id not in r["output_ids"] for r in one)
    assert len(one[0]["hidden_mean"]) == 32
    assert one[0]["em"] in (0.0, 1.0) and one[0]["f1"] is not None and one[3]["em"] is None
    assert model.training  # restored (it was in train mode: a fresh model is)
    cols = gen.row_columns(one)
    assert cols["gen_probes"] == 4 and cols["em"] == pytest.approx(100 * (one[0]["em"] + one[1]["em"]) / 2)
    frame = gen.frame({"study": "s", "model": "m", "bits": 4, "rank": 2, "mask": "all", "seed": 0, "n_train": None},
                      one)
    assert frame.height == 4 and frame["output_ids"].to_list()[0] == one[0]["output_ids"]


def test_row_columns_without_answers_are_nan():
    import math

    cols = gen.row_columns([{"em": None, "f1": None, "output_ids": [1, 2]}])
    assert math.isnan(cols["em"]) and math.isnan(cols["f1"]) and cols["gen_mean_tokens"] == 2
