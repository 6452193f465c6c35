"""Extractive QA (QaLoF's task): answer spans from token offsets, and EM/F1 as SQuAD v1.1's evaluate script
computes them, on a small hand-made set whose scores are worked out by hand."""

from types import SimpleNamespace

import pytest
import torch

from qlbench.data.example import Example
from qlbench.tasks import extractive_qa as qa
from qlbench.study.settings import tree

SET = [  # context, answer, the span the "model" predicts
    ("Botany is the study of what? The plants.\nWho wrote Hamlet? Shakespeare", "The plants.", "plants."),
    ("Who was the 37th President? Richard Nixon\nWhat is H2O? Water", "Richard Nixon", "Nixon"),
    ("What year was Kennedy shot? 1963\nWhat is the capital of France? Paris", "1963", "shot? 1963"),
]


def examples():
    out = []
    for context, answer, _ in SET:
        question = context.split("?")[0] + "?"
        out.append(Example("", answer, (answer,), context=context, question=question,
                           answer_start=context.index(answer)))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from qlbench.data.models import train_tokenizer

    text = " ".join(c for c, _, _ in SET) * 20
    return train_tokenizer(text, 300)


def test_answer_tokens_cover_the_answer_exactly(tokenizer):
    feats = qa.featurize(tokenizer, examples(), 64)
    for k, (_, answer, _) in enumerate(SET):
        s, e = int(feats.batch["start_positions"][k]), int(feats.batch["end_positions"][k])
        spans = feats.spans(k)
        assert feats.text[k][spans[s][0] : spans[e][1]].strip() == answer
        assert all(spans[i][0] >= 0 for i in range(s, e + 1))  # inside the context


def test_a_span_cut_off_by_truncation_is_not_a_training_target(tokenizer):
    feats = qa.featurize(tokenizer, examples(), 12)
    assert (feats.batch["start_positions"] == -1).any()


def test_em_f1_equal_squad_v11_by_hand(tokenizer):
    """Predictions: "plants." for "The plants." (articles and punctuation dropped: EM 1, F1 1); "Nixon" for
    "Richard Nixon" (EM 0; P 1, R 1/2: F1 2/3); "shot? 1963" for "1963" (EM 0; P 1/2, R 1: F1 2/3).
    SQuAD v1.1: EM 100/3 = 33.33, F1 100 * (1 + 2/3 + 2/3) / 3 = 77.78."""
    exs = examples()
    data = qa.prepare(tokenizer, exs, exs, tree(seq_len=64))
    feats = data.eval_features
    start = torch.full(data.eval["input_ids"].shape, -10.0)
    end = start.clone()
    for k, (_, _, predicted) in enumerate(SET):
        lo = feats.text[k].index(predicted, feats.text[k].index("Context: "))
        hi = lo + len(predicted)
        tokens = [i for i, (s, e) in enumerate(feats.spans(k)) if s >= 0 and s < hi and e > lo]
        start[k, tokens[0]], end[k, tokens[-1]] = 5.0, 5.0

    def model(input_ids, attention_mask, output_hidden_states=False):
        rows = [next(k for k in range(len(SET)) if torch.equal(data.eval["input_ids"][k], ids)) for ids in input_ids]
        return SimpleNamespace(start_logits=start[rows], end_logits=end[rows],
                               hidden_states=[torch.zeros(len(rows), input_ids.shape[1], 4)])

    model.training, model.eval, model.train = False, lambda: None, lambda mode=True: None
    scores = qa.metrics(model, tokenizer, data, torch.device("cpu"), batch_size=2)
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
    outputs = qa.outputs(model, tokenizer, data, torch.device("cpu"))
    assert [o["output"] for o in outputs] == ["plants.", "Nixon", "shot? 1963"]


def test_best_span_keeps_to_the_context_and_to_order():
    offsets = [[-1, -1], [-1, -1], [10, 14], [15, 19]]  # two question tokens, two context tokens
    text = "Question: abcd efgh"
    start = torch.tensor([9.0, 0.0, 1.0, 2.0])  # the best start is in the question: not an answer
    end = torch.tensor([0.0, 0.0, 3.0, 1.0])  # the best end comes before the best context start
    assert qa.best_span(start, end, offsets, text) == "abcd"  # start 2 + end 2 (3 + 1 = 4) beats end before start


def test_offsets_are_one_tensor_and_decode_the_answer_of_a_short_feature():
    """A feature shorter than the batch's longest, its offsets one int32 tensor (the cache reads back fast): the
    question and the padding are OUTSIDE, and its answer decodes from its spans though the padding's logits are the
    highest (the padding is left out, not among the N_BEST starts and ends)."""
    from qlbench.data.models import train_tokenizer

    short, long = ("Who wrote Hamlet?", "It was Shakespeare"), ("What is it?", "word " * 40 + "end")
    exs = [Example("", a, (a,), context=c, question=q, answer_start=c.index(a))
           for q, c, a in [(*short, "Shakespeare"), (*long, "end")]]
    tok = train_tokenizer(" ".join(f"Question: {e.question}\nContext: {e.context}" for e in exs) * 5, 300)
    feats = qa.featurize(tok, exs, 64)
    n, length = int(feats.batch["attention_mask"][0].sum()), feats.batch["input_ids"].shape[1]
    assert feats.offsets.dtype == torch.int32 and feats.offsets.shape == (2, length, 2) and length - n > qa.N_BEST
    spans = feats.spans(0)
    assert len(spans) == n and (feats.offsets[0, n:] == -1).all()
    context = feats.text[0].index("Context: ") + len("Context: ")
    mapping = tok(feats.text[0], return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    assert [s < 0 for s, _ in spans] == [s < context for s, _ in mapping] and any(s >= 0 for s, _ in spans)
    s, e = int(feats.batch["start_positions"][0]), int(feats.batch["end_positions"][0])
    start, end = torch.zeros(length), torch.zeros(length)
    start[n:], end[n:] = 9.0, 9.0  # padding: masked out by the model's caller, but highest here
    start[s], end[e] = 5.0, 5.0
    assert qa.best_span(start, end, spans, feats.text[0]) == "Shakespeare"
