"""Extractive question answering (SQuAD v1.1, QaLoF's task): a span head on the base picks the answer's first and
last token in the context; trained with the LoRA weights; scored by EM/F1 with SQuAD v1.1's normalization.

The question comes first (`Question: q\\nContext: c`): a causal model's context tokens can then attend to the question
they are scored for. One feature per example, truncated to `seq_len` tokens (no doc-stride windows: an answer cut
off by the truncation cannot be predicted, and such examples are left out of training); padded on the right to
the longest feature. Prediction follows the reference post-processing: the best start + end logit over the 20 best
starts and ends, inside the context, end not before start, at most 30 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qlbench.errors import QlbenchError
from qlbench.registry import Task
from qlbench.tasks import Batch
from qlbench.tasks.squad import best_over_answers, exact_match, f1

TASK = Task(
    name="extractive_qa",
    summary="a span head picks the answer in its context: EM / F1 (SQuAD v1.1 normalisation)",
    metrics=("em", "f1"),
)
NAME = TASK.name
HEAD = "AutoModelForQuestionAnswering"
PEFT_TASK = None  # peft's QUESTION_ANS would copy the head per adapter; one head is shared by every width
HEAD_MODULES = ("qa_outputs",)  # the span head: new, trained beside the LoRA weights
N_BEST, MAX_ANSWER_TOKENS = 20, 30
OUTSIDE = (-1, -1)  # a token's offsets outside the context (the question, and padding): no context character is < 0


@dataclass
class Features:
    batch: Batch  # input_ids, attention_mask, start_positions, end_positions: [n, length]
    text: list[str]  # each feature's full text, which offsets index into
    # [n, length, 2] int32: per token (start, end) characters in `text`, OUTSIDE outside the context; a tensor, not
    # lists of tuples, which the cache's weights-only load builds in Python (squad's eval set: 10 s, not 0.4 s)
    offsets: torch.Tensor

    def spans(self, k: int) -> list[list[int]]:
        """Feature `k`'s [start, end] per token, its padding left out."""
        return self.offsets[k, : int(self.batch["attention_mask"][k].sum())].tolist()


@dataclass
class Data:
    train: Batch
    eval: Batch
    eval_features: Features
    eval_examples: list

    def describe(self, n_train_examples: int) -> str:
        return (f"{n_train_examples} train examples ({self.train['input_ids'].shape[0]} spans inside "
                f"{self.train['input_ids'].shape[1]} tokens), {len(self.eval_examples)} eval examples")


def layout(example) -> tuple[str, int]:
    """The feature's text and where its context starts in it."""
    prefix = f"Question: {example.question.strip()}\nContext: "
    return prefix + example.context, len(prefix)


def answer_chars(example) -> tuple[int, int]:
    """The first answer's [start, end) characters in the context (its given offset, or its first occurrence)."""
    answer = example.response
    start = example.answer_start if example.answer_start >= 0 else example.context.find(answer)
    if start < 0:
        raise QlbenchError(f"answer {answer!r} is not in its context")
    return start, start + len(answer)


def featurize(tokenizer, examples: list, seq_len: int) -> Features:
    if not examples or not examples[0].context:
        raise QlbenchError("extractive_qa needs examples with a context (a `qa` dataset, or `extractive`)")
    texts, ids, offsets, starts, ends = [], [], [], [], []
    for ex in examples:
        text, base = layout(ex)
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=seq_len,
                        return_offsets_mapping=True)
        offs = [(s, e) if s >= base else OUTSIDE for s, e in enc["offset_mapping"]]
        a0, a1 = (c + base for c in answer_chars(ex))
        start = next((i for i, (s, e) in enumerate(offs) if e > a0 and (s, e) != OUTSIDE), -1)
        end = next((i for i in reversed(range(len(offs))) if offs[i][0] < a1 and offs[i] != OUTSIDE), -1)
        if start < 0 or end < start or offs[end][1] < a1 - 1:  # cut off by the truncation
            start = end = -1
        texts.append(text), ids.append(enc["input_ids"]), offsets.append(offs), starts.append(start), ends.append(end)
    length = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    spans = torch.full((len(ids), length, 2), OUTSIDE[0], dtype=torch.int32)
    for k, i in enumerate(ids):
        input_ids[k, : len(i)] = torch.tensor(i)
        mask[k, : len(i)] = 1
        spans[k, : len(i)] = torch.tensor(offsets[k], dtype=torch.int32)
    batch = Batch(input_ids=input_ids, attention_mask=mask, start_positions=torch.tensor(starts),
                  end_positions=torch.tensor(ends))
    return Features(batch, texts, spans)


def prepare(tokenizer, train_examples: list, eval_examples: list, settings) -> Data:
    """`settings`: the cell's settings tree (its lengths and batches)."""
    train = featurize(tokenizer, train_examples, settings.train.seq_len).batch
    keep = train["start_positions"] >= 0
    if not keep.any():
        raise QlbenchError(f"no training answer fits in {settings['seq_len']} tokens")
    evaluated = featurize(tokenizer, eval_examples, settings.train.seq_len)
    return Data(train=train[keep], eval=evaluated.batch, eval_features=evaluated, eval_examples=list(eval_examples))


def batch_sampler(data: Batch, batch_size: int, seed: int):
    """step -> a batch of random features; a pure function of (seed, step)."""

    def sample(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return data[torch.randint(0, data["input_ids"].shape[0], (batch_size,), generator=g)]

    return sample


def _forward(model, batch: Batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def span_loss(start_logits, end_logits, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """Mean of the start and end cross-entropies (as transformers' *ForQuestionAnswering), padding masked out."""
    pad = batch["attention_mask"] == 0
    ce = torch.nn.functional.cross_entropy
    s = ce(start_logits.float().masked_fill(pad, -1e4), batch["start_positions"], reduction=reduction)
    e = ce(end_logits.float().masked_fill(pad, -1e4), batch["end_positions"], reduction=reduction)
    return (s + e) / 2


def loss(model, batch: Batch) -> torch.Tensor:
    out = _forward(model, batch)
    return span_loss(out.start_logits, out.end_logits, batch)


def loss_and_logits(model, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss and the start and end logits over positions ([batch, seq] each, padding at -1e4 as in
    `span_loss`, so it carries no probability), for distillation from a teacher."""
    out = _forward(model, batch)
    pad = batch["attention_mask"] == 0
    return (span_loss(out.start_logits, out.end_logits, batch),
            [out.start_logits.float().masked_fill(pad, -1e4), out.end_logits.float().masked_fill(pad, -1e4)])


def _passes(model, data: Batch, batch_size: int, device, autocast_dtype=None, hidden: bool = False):
    """Evaluation-mode forward passes over `data` in chunks: yields (first index, chunk, outputs)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, data["input_ids"].shape[0], batch_size):
                batch = data[i : i + batch_size].to(device)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=hidden)
                yield i, batch, out
    finally:
        model.train(was_training)


def _loss_sum(out, batch: Batch) -> tuple[float, int]:
    """The summed span loss of a chunk's answerable features, and how many there are."""
    answerable = batch["start_positions"] >= 0
    if not answerable.any():
        return 0.0, 0
    loss = span_loss(out.start_logits[answerable], out.end_logits[answerable], batch[answerable], "sum")
    return loss.item(), int(answerable.sum())


def _predict(model, data: Data, batch_size: int, device, autocast_dtype=None) -> tuple[float, list[dict]]:
    """The span loss over answerable eval features (as `eval_loss`), and one prediction row per eval example."""
    total, count, rows = 0.0, 0, []
    feats = data.eval_features
    for i, batch, out in _passes(model, data.eval, batch_size, device, autocast_dtype, hidden=True):
        loss, n = _loss_sum(out, batch)
        total, count = total + loss, count + n
        m = batch["attention_mask"].unsqueeze(-1).float()
        hidden = ((out.hidden_states[-1].float() * m).sum(1) / m.sum(1)).cpu().tolist()
        for j in range(batch["input_ids"].shape[0]):
            k = i + j
            text = best_span(out.start_logits[j].float().cpu(), out.end_logits[j].float().cpu(), feats.spans(k),
                             feats.text[k])
            ex = data.eval_examples[k]
            rows.append({"probe": k, "prompt": layout(ex)[0], "reference": ex.response,
                         "answers": list(ex.answers), "output": text, "output_ids": [],
                         "em": best_over_answers(exact_match, text, ex.answers),
                         "f1": best_over_answers(f1, text, ex.answers), "hidden_mean": hidden[j]})
    return (total / count if count else float("nan")), rows


def best_span(start_logits, end_logits, offsets: list, text: str) -> str:
    """The reference post-processing: best start + end score over the N_BEST starts and ends in the context.
    `offsets`: the feature's (start, end) per token, padding left out (`Features.spans`)."""
    n = len(offsets)
    starts = torch.argsort(start_logits[:n], descending=True)[:N_BEST].tolist()
    ends = torch.argsort(end_logits[:n], descending=True)[:N_BEST].tolist()
    best, best_score = "", float("-inf")
    for s in starts:
        for e in ends:
            if offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                continue
            score = float(start_logits[s] + end_logits[e])
            if score > best_score:
                best, best_score = text[offsets[s][0] : offsets[e][1]], score
    return best.strip()


def eval_loss(model, data: Batch, batch_size: int, device, autocast_dtype=None) -> float:
    """Mean span loss over the answerable features of `data`."""
    total, count = 0.0, 0
    for _, batch, out in _passes(model, data, batch_size, device, autocast_dtype):
        loss, n = _loss_sum(out, batch)
        total, count = total + loss, count + n
    return total / count if count else float("nan")


def perplexity(loss: float) -> float:
    return float("nan")  # a span loss has no perplexity


def metrics(model, tokenizer, data: Data, device, autocast_dtype=None, batch_size: int = 16) -> dict:
    """EM and F1 (in %) over the whole evaluation set, as SQuAD v1.1's evaluate script computes them, and the eval
    loss taken in the same passes."""
    loss, rows = _predict(model, data, batch_size, device, autocast_dtype)
    return {"loss": loss, **summary(rows)}


def summary(rows: list[dict]) -> dict:
    """EM and F1 (in %) of the prediction rows."""
    return {"em": 100 * sum(r["em"] for r in rows) / len(rows), "f1": 100 * sum(r["f1"] for r in rows) / len(rows)}


def outputs(model, tokenizer, data: Data, device, autocast_dtype=None) -> list[dict]:
    """One row per evaluation example: its predicted span, EM/F1, and the pooled last hidden state."""
    return _predict(model, data, 16, device, autocast_dtype)[1]
