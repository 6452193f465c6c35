"""The causal language-modelling task: a model learns to continue text.

Examples become one EOS-separated token stream cut into [n, seq_len] blocks; a batch is a random draw of blocks
(a pure function of seed and step); the loss is the mean next-token cross-entropy; evaluation is that loss over
the held-out blocks and greedy generations of the first held-out prompts (EM/F1 where the data has answers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlbench.errors import QlbenchError
from qlbench.registry import Task
from qlbench.tasks import generate

TASK = Task(
    name="causal_lm",
    summary="next-token loss and perplexity on held-out text; greedy generations",
    metrics=(),
)
NAME = TASK.name
HEAD = "AutoModelForCausalLM"
PEFT_TASK = "CAUSAL_LM"
HEAD_MODULES: tuple[str, ...] = ()  # the LM head is the base's own, frozen


@dataclass
class Data:
    """What the cell trains and evaluates on: token blocks, and the held-out examples generations are probed on."""

    train: torch.Tensor  # [n, seq_len]
    eval: torch.Tensor  # [m, seq_len]
    eval_examples: list

    def describe(self, n_train_examples: int) -> str:
        return (f"{n_train_examples} train examples ({self.train.shape[0]} blocks), "
                f"{len(self.eval_examples)} eval examples ({self.eval.shape[0]} blocks)")


def prepare(tokenizer, train_examples: list, eval_examples: list, settings) -> Data:
    """`settings`: the cell's settings tree (its lengths and batches)."""
    train_blocks = blocks(tokenizer, [e.text for e in train_examples], settings.train.seq_len)
    eval_blocks = blocks(tokenizer, [e.text for e in eval_examples], settings.train.seq_len)
    if settings.eval.eval_batches:
        eval_blocks = eval_blocks[: settings.eval.eval_batches * settings.train.batch_size]
    return Data(train_blocks, eval_blocks, eval_examples)


def blocks(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Texts -> one EOS-separated token stream cut into [n, seq_len] blocks (the tail that does not fill one is dropped)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [eos]
    n = len(stream) // seq_len
    if n == 0:
        raise QlbenchError(f"only {len(stream)} tokens of text: not one block of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def batch_sampler(data: torch.Tensor, batch_size: int, seed: int):
    """step -> a batch of random blocks; a pure function of (seed, step), so a resumed run sees the same batches."""

    def sample(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]

    return sample


def loss(model, x: torch.Tensor) -> torch.Tensor:
    """The training loss of a batch of blocks: mean next-token cross-entropy (transformers shifts the labels).
    `use_cache=False`: a model in training mode builds the key/value cache of generation unless told not to (25 of a
    small GPT-2 step's 880 torch ops; the plain loop pays them), and nothing reads it here."""
    return model(input_ids=x, labels=x, use_cache=False).loss


def loss_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss and the logits it came from ([batch, seq, vocab]), for distillation from a teacher."""
    out = model(input_ids=x, labels=x, use_cache=False)
    return out.loss, [out.logits]


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, batch_size: int, device: torch.device, autocast_dtype=None) -> float:
    """Mean next-token cross-entropy over every predicted token of `data` ([n, seq_len] blocks)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.shape[0], batch_size):
        x = data[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x, use_cache=False).logits
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += losses.item()
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def metrics(model, tokenizer, data: Data, device, autocast_dtype=None, batch_size: int = 16) -> dict:
    """Nothing beyond the loss at each width: generation is the costly part, done once, in `outputs`."""
    return {}


def summary(rows: list[dict]) -> dict:
    """Nothing: the generations' EM/F1 are the row's `em`/`f1` (`generate.row_columns`)."""
    return {}


def outputs(model, tokenizer, data: Data, device, autocast_dtype=None) -> list[dict]:
    """Greedy outputs of the probe prompts (the first held-out examples), one dict each."""
    return generate.generate(model, tokenizer, generate.probe_examples(data.eval_examples), device, autocast_dtype)
