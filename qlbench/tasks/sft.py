"""Supervised fine-tuning as TRL's SFTTrainer does it: each example's tokens and labels as TRL builds them
(`qlbench.data.sft`: the loss on the completion of prompt-completion data, on the assistant turns when asked,
conversations rendered with the model's chat template), packed into rows where each example attends only to
itself, or one example a padded row (`qlbench.tasks.packing`).

The loss is the mean next-token cross-entropy over the label tokens; the eval loss and perplexity cover the same
tokens of the held-out examples; the generations are greedy answers to the first held-out prompts (rendered with the
generation prompt), scored against each example's answer by exact match and token F1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlbench.errors import QlbenchError
from qlbench.registry import Task
from qlbench.tasks import Batch, generate, packing

TASK = Task(
    name="sft",
    summary="TRL's SFT: prompt-completion and chat data, the loss on the answer, packed examples; greedy answers",
    metrics=("answer_loss",),
)
NAME = TASK.name
HEAD = "AutoModelForCausalLM"
PEFT_TASK = "CAUSAL_LM"
HEAD_MODULES: tuple[str, ...] = ()


@dataclass
class Data:
    """Packed (or padded) rows of the train and held-out examples, and the held-out prompts generations answer."""

    train: Batch  # input_ids, labels, position_ids | attention_mask: [rows, seq_len]
    eval: Batch
    probes: list  # {prompt_ids, reference, origin} of the first held-out examples that have a prompt
    template: str  # the chat template rendered with: `name:hash` (qlbench.study.chat_template)
    counts: list  # [train examples, eval examples, train label tokens]
    # the held-out rows with labels on the answers only (completion, assistant turns), whatever the training loss
    # covers: the one eval loss that compares completion-only with full-sequence training; None where the answers
    # cannot be found (a conversation rendered by a template without generation markers)
    answers: Batch | None = None

    def describe(self, n_train_examples: int) -> str:
        return (f"{self.counts[0]} train examples in {self.train.shape[0]} rows ({self.counts[2]} label tokens), "
                f"{self.counts[1]} eval examples in {self.eval.shape[0]} rows; chat template {self.template}")


def load_examples(spec: dict, name: str) -> tuple[list, list]:
    """(train, eval) records of the dataset entry: TRL's formats, or an older one's examples as prompt-completion."""
    from qlbench.data import sft

    return sft.load(spec, name)


def setup(tokenizer, settings, what: str = "sft") -> str:
    """Put the cell's chat template on the tokenizer; its `name:hash`. assistant_only_loss needs generation markers."""
    from qlbench.study import chat_template

    name, text = chat_template.apply(tokenizer, settings.sft.template, what)
    if settings.sft.assistant_only_loss and not chat_template.has_generation_markers(text):
        raise QlbenchError(f"{what}: assistant_only_loss: the model's chat template has no {{% generation %}} "
                           "markers to find the assistant turns by (use template: chatml, which has them)")
    return f"{name}:{chat_template.text_hash(text)}"


def tokenized(tokenizer, records: list, settings, name: str = "") -> list[dict]:
    """Records (or older formats' Examples) -> TRL's {input_ids, labels} per example (and their probes)."""
    from qlbench.data import sft

    if records and not isinstance(records[0], sft.Record):
        records = sft.from_examples(records, "example")
    opts = sft.options(settings)
    out = []
    for rec in records:
        sft.check_conversational(rec, opts, name)
        example = sft.tokenize(tokenizer, rec, opts, name)
        if example is not None:
            out.append(example)
    return out


def prepare(tokenizer, train_examples: list, eval_examples: list, settings) -> Data:
    template = setup(tokenizer, settings, f"dataset {settings.data.dataset!r}")
    train = tokenized(tokenizer, train_examples, settings, settings.data.dataset)
    held_out = tokenized(tokenizer, eval_examples, settings, settings.data.dataset)
    if not train or not held_out:
        raise QlbenchError(f"dataset {settings.data.dataset!r}: no examples left to train or evaluate on")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seq_len, packed = settings.train.seq_len, settings.sft.packing
    train_rows = packing.rows([(e["input_ids"], e["labels"]) for e in train], seq_len, pad, packed)
    eval_rows = packing.rows([(e["input_ids"], e["labels"]) for e in held_out], seq_len, pad, packed)
    if settings.eval.eval_batches:
        eval_rows = eval_rows[: settings.eval.eval_batches * settings.train.batch_size]
    probes = [{"prompt_ids": e["prompt_ids"], "reference": e["reference"], "origin": e["origin"]}
              for e in held_out if e["prompt_ids"]][: generate.N_PROBES]
    answers = answer_rows(tokenizer, eval_examples, settings, pad)
    if answers is not None and settings.eval.eval_batches:
        answers = answers[: settings.eval.eval_batches * settings.train.batch_size]
    return Data(train_rows, eval_rows, probes, template, [len(train), len(held_out), packing.label_tokens(train_rows)],
                answers)


def answer_rows(tokenizer, records: list, settings, pad: int) -> Batch | None:
    """The held-out examples with the loss on their answers only: completion-only for prompt-completion data, the
    assistant turns for conversations (found by the template's generation markers); None where neither applies."""
    import dataclasses

    from qlbench.data import sft
    from qlbench.study import chat_template

    if records and not isinstance(records[0], sft.Record):
        records = sft.from_examples(records, "example")
    kinds = {r.kind for r in records}
    if kinds - {"prompt_completion", "conversational"}:
        return None
    if "conversational" in kinds and not chat_template.has_generation_markers(tokenizer.chat_template or ""):
        return None
    opts = dataclasses.replace(sft.options(settings), completion_only_loss=True,
                               assistant_only_loss="conversational" in kinds)
    examples = [e for e in (sft.tokenize(tokenizer, r, opts) for r in records) if e is not None]
    if not examples:
        return None
    return packing.rows([(e["input_ids"], e["labels"]) for e in examples], settings.train.seq_len, pad,
                        settings.sft.packing)


def check(study) -> None:
    """Every record of the study's dataset read and tokenized as its cells will, before any job: a bad record is one
    line naming its file, line and field. Models whose tokenizer is not on disk yet (a base `qlbench prepare` makes)
    get the record checks only; their cells tokenize the same way and stop on the same line."""
    settings = study.tree
    name = settings.data.dataset
    train, held_out = load_examples(study.config["datasets"][name], name)
    for model in study.models:
        tokenizer = _tokenizer(study.model(model), model, study.resources)
        if tokenizer is not None:
            setup(tokenizer, settings, f"dataset {name!r} (model {model!r})")
            tokenized(tokenizer, list(train) + list(held_out), settings, name)


def _tokenizer(spec: dict, model: str, resources: str):
    """The model's tokenizer if it is on disk (a local folder, the hub cache, a prepared base), else None."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from qlbench.data import hub, models

    if spec["source"] in models.PREPARED:
        where = models.base_dir(resources, model)
        ref = str(where) if (where / "config.json").exists() else None
    elif spec["source"] == "path":
        ref = spec["name"] if Path(spec["name"]).exists() else None
    else:
        ref = hub.cached(spec["name"])
    if ref is None:
        return None
    return AutoTokenizer.from_pretrained(ref, local_files_only=True, trust_remote_code=models.remote_code(spec))


def batch_sampler(data: Batch, batch_size: int, seed: int):
    """step -> a batch of random rows; a pure function of (seed, step), as causal_lm's."""

    def sample(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]

    return sample


loss = packing.loss
loss_and_logits = packing.loss_and_logits
eval_loss = packing.eval_loss


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def metrics(model, tokenizer, data: Data, device, autocast_dtype=None, batch_size: int = 16) -> dict:
    """The eval loss over the held-out answers only (NaN where they cannot be found)."""
    if data.answers is None:
        return {"answer_loss": float("nan")}
    return {"answer_loss": eval_loss(model, data.answers, batch_size, device, autocast_dtype)}


def summary(rows: list[dict]) -> dict:
    """Nothing: the generations' EM/F1 are the row's `em`/`f1` (`generate.row_columns`)."""
    return {}


def outputs(model, tokenizer, data: Data, device, autocast_dtype=None) -> list[dict]:
    """Greedy answers to the probe prompts (token ids as rendered at prepare), one dict each, scored against the
    example's answer: EM and token F1 of the whole answer (up to EOS or the template's end of turn)."""
    from qlbench.tasks.squad import exact_match, f1

    was_training = model.training
    model.eval()
    context = generate._context_length(model)
    new_tokens = min(generate.MAX_NEW_TOKENS, context // 2)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    try:
        for i in range(0, len(data.probes), 8):
            chunk = data.probes[i : i + 8]
            prompts = [list(p["prompt_ids"])[-(context - new_tokens):] for p in chunk]  # a long prompt keeps its end
            width = max(len(p) for p in prompts)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, p in enumerate(prompts):  # left-padded: every prompt ends where generation starts
                ids[k, width - len(p):], mask[k, width - len(p):] = torch.tensor(p), 1
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                seqs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                      pad_token_id=pad, eos_token_id=eos)
                outs = [generate._until_eos(s.tolist(), eos) for s in seqs[:, width:]]
                hidden = generate._pooled_hidden(model, ids, mask, outs, pad)
            for k, (probe, out_ids) in enumerate(zip(chunk, outs)):
                text = answer(tokenizer.decode(out_ids, skip_special_tokens=True))
                ref = probe["reference"]
                rows.append({"probe": i + k, "prompt": tokenizer.decode(prompts[k]), "reference": ref,
                             "answers": [ref], "output": text, "output_ids": out_ids,
                             "em": float(exact_match(text, ref)), "f1": float(f1(text, ref)),
                             "hidden_mean": hidden[k]})
    finally:
        model.train(was_training)
    return rows


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")  # where a template's turn ends in text


def answer(text: str) -> str:
    """A generation up to the end of its turn (a tokenizer without the marker as a special token writes it out)."""
    for end in END_OF_TURN:
        text = text.split(end, 1)[0]
    return text.strip()
