"""Sequence classification: a linear head (`score`) on the base's last-token hidden state, trained with the LoRA
weights; accuracy as its metric.

A text is right-padded with the pad token (EOS) to the longest text of its set, at most `seq_len` tokens, and the
head reads the last non-pad token (transformers' `*ForSequenceClassification`). Label ids are the label names in
sorted order, in the data and in the head's config alike (`head_kwargs` sizes the head before any data is read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlbench.errors import QlbenchError
from qlbench.registry import Task
from qlbench.tasks import Batch

TASK = Task(
    name="classification",
    summary="a linear head on the last token: accuracy",
    metrics=("accuracy",),
)
NAME = TASK.name
HEAD = "AutoModelForSequenceClassification"
PEFT_TASK = "SEQ_CLS"  # peft then trains the new head (`score`) beside the LoRA weights (modules_to_save)
HEAD_MODULES: tuple[str, ...] = ("score",)


def head_kwargs(dataset_spec: dict) -> dict:
    """What the head's config needs before loading (`qlbench.data.models.load(..., head_kwargs=...)`): its number of
    labels and their names. (The loader also sets the pad token the head looks for to find each text's end.)"""
    from qlbench.data.labelled import label_names

    names = sorted(label_names(dataset_spec))
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


@dataclass
class Data:
    train: Batch  # input_ids, attention_mask, labels
    eval: Batch
    eval_examples: list
    labels: list[str]  # label names in id order

    def describe(self, n_train_examples: int) -> str:
        counts = torch.bincount(self.eval["labels"], minlength=len(self.labels)).tolist()
        return (f"{n_train_examples} train texts ({self.train.shape[1]} tokens padded), {len(self.eval_examples)} "
                f"eval texts, {len(self.labels)} labels ({', '.join(f'{n} {c}' for n, c in zip(self.labels, counts))})")


def encode(tokenizer, texts: list[str], label_ids: list[int], seq_len: int) -> Batch:
    """Texts -> right-padded token ids (at most `seq_len`), their attention mask, and their labels."""
    ids = [x[:seq_len] or [tokenizer.eos_token_id] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    return Batch(input_ids=torch.tensor([x + [pad] * (width - len(x)) for x in ids], dtype=torch.long),
                 attention_mask=torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], dtype=torch.long),
                 labels=torch.tensor(label_ids, dtype=torch.long))


def prepare(tokenizer, train_examples: list, eval_examples: list, settings) -> Data:
    """`settings`: the cell's settings tree (its lengths and batches)."""
    names = sorted({e.response for e in train_examples + eval_examples})
    if len(names) < 2:
        raise QlbenchError(f"classification needs at least 2 labels; the data has {names}")
    index = {n: i for i, n in enumerate(names)}
    train = encode(tokenizer, [e.prompt for e in train_examples], [index[e.response] for e in train_examples],
                   settings.train.seq_len)
    held_out = encode(tokenizer, [e.prompt for e in eval_examples], [index[e.response] for e in eval_examples],
                      settings.train.seq_len)
    return Data(train, held_out, list(eval_examples), list(names))


def batch_sampler(data: Batch, batch_size: int, seed: int):
    """step -> a batch of random texts; a pure function of (seed, step)."""

    def sample(step: int) -> Batch:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]

    return sample


def loss(model, batch: Batch) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits(model, batch).float(), batch["labels"])


def loss_and_logits(model, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss and the class logits it came from ([batch, classes]), for distillation from a teacher."""
    z = logits(model, batch)
    return torch.nn.functional.cross_entropy(z.float(), batch["labels"]), [z]


def logits(model, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def predict(model, batch: Batch, batch_size: int, device, autocast_dtype=None) -> torch.Tensor:
    """[n, labels] logits of every text in `batch`, in evaluation mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, batch.shape[0], batch_size):
        chunk = batch[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out.append(logits(model, chunk).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def eval_loss(model, data: Batch, batch_size: int, device, autocast_dtype=None) -> float:
    """Mean cross-entropy of the held-out labels."""
    return torch.nn.functional.cross_entropy(predict(model, data, batch_size, device, autocast_dtype),
                                             data["labels"]).item()


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def metrics(model, tokenizer, data: Data, device, autocast_dtype=None, batch_size: int = 16) -> dict:
    pred = predict(model, data.eval, batch_size, device, autocast_dtype).argmax(-1)
    return {"accuracy": (pred == data.eval["labels"]).float().mean().item()}


def summary(rows: list[dict]) -> dict:
    """Accuracy of the prediction rows (`em` is 1 where the prediction is right)."""
    return {"accuracy": sum(r["em"] for r in rows) / len(rows)}


def outputs(model, tokenizer, data: Data, device, autocast_dtype=None) -> list[dict]:
    """Every held-out text with its label and the model's prediction (in generations.parquet's schema: `output` is
    the predicted label, `em` and `f1` are 1 when it is right)."""
    pred = predict(model, data.eval, 16, device, autocast_dtype).argmax(-1).tolist()
    rows = []
    for i, (example, p) in enumerate(zip(data.eval_examples, pred)):
        right = float(data.labels[p] == example.response)
        rows.append({"probe": i, "prompt": example.prompt, "reference": example.response,
                     "answers": [example.response], "output": data.labels[p], "output_ids": [p],
                     "em": right, "f1": right, "hidden_mean": []})
    return rows
