"""TRL as the known answer: for text, prompt-completion (strings and message lists) and conversational data, under
each loss setting, the tokens and labels `qlbench.data.sft` builds equal what `SFTTrainer(...).train_dataset` holds
for the same records, tokenizer, chat template and max_length (trl 1.16; a tiny GPT-2 on the CPU, ~1 s a case)."""

from __future__ import annotations

import copy
import warnings

import pytest

from qlbench.data import sft
from qlbench.study import chat_template

pytest.importorskip("trl")

MAX_LENGTH = 256
TEXT = [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "Return the value of the key."},
        {"text": "A module is a file of definitions."}]
PAIRS = [("What is a list?", " An ordered sequence."), ("Name a colour.", " Blue"),
         ("Add two and three:", " five")]
STRINGS = [{"prompt": p, "completion": c} for p, c in PAIRS]
MESSAGES = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}],
             "completion": [{"role": "assistant", "content": c.strip()}]} for p, c in PAIRS]
CHATS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p},
                       {"role": "assistant", "content": c.strip()}, {"role": "user", "content": "And again?"},
                       {"role": "assistant", "content": "Again:" + c}]} for p, c in PAIRS]

# (id, format, rows, completion_only_loss, assistant_only_loss)
CASES = [
    ("text", "text", TEXT, None, False),
    ("strings-completion-only-default", "prompt_completion", STRINGS, None, False),
    ("strings-completion-only", "prompt_completion", STRINGS, True, False),
    ("strings-full-sequence", "prompt_completion", STRINGS, False, False),
    ("messages-completion-only", "prompt_completion", MESSAGES, None, False),
    ("messages-full-sequence", "prompt_completion", MESSAGES, False, False),
    ("messages-assistant-only", "prompt_completion", MESSAGES, False, True),
    ("conversational", "conversational", CHATS, None, False),
    ("conversational-assistant-only", "conversational", CHATS, None, True),
]
# max_lengths shorter than some examples: TRL keeps the start (and drops an example left with no label)
TRUNCATED = {"text": 12, "strings-completion-only": 12, "conversational-assistant-only": 120}


@pytest.fixture(scope="module")
def tokenizers():
    """qlbench's byte-level BPE (no BOS), and the same with a BOS its tokenizer adds (as Llama's do)."""
    from tokenizers.processors import TemplateProcessing

    from qlbench.data.examples import pydoc_text
    from qlbench.data.models import train_tokenizer

    plain = train_tokenizer(pydoc_text()[:100_000], 400)
    plain.chat_template = chat_template.CHATML
    bos = copy.deepcopy(plain)
    bos.add_special_tokens({"bos_token": "<s>"})
    bos._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos.bos_token_id)])
    return {"plain": plain, "bos": bos}


@pytest.fixture(scope="module")
def model(tokenizers):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tokenizers["bos"]), n_positions=MAX_LENGTH, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(cfg)


def trl_rows(model, tokenizer, rows, completion_only_loss, assistant_only_loss, tmp_path,
             max_length: int = MAX_LENGTH) -> list[dict]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True, report_to=[], packing=False,
                     completion_only_loss=completion_only_loss, assistant_only_loss=assistant_only_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=copy.deepcopy(tokenizer))
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.train_dataset]


def ours(tokenizer, fmt, rows, completion_only_loss, assistant_only_loss, max_length: int = MAX_LENGTH,
         truncation: bool = False) -> list[dict]:
    opts = sft.Options(max_length, completion_only_loss=completion_only_loss is not False,
                       assistant_only_loss=assistant_only_loss, truncation=truncation)
    out = []
    for i, row in enumerate(rows):
        example = sft.tokenize(tokenizer, sft.record(f"rows line {i + 1}", row, fmt, "parity"), opts)
        if example is not None:
            out.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    return out


@pytest.mark.parametrize("which", ["plain", "bos"])
@pytest.mark.parametrize("case,fmt,rows,completion_only_loss,assistant_only_loss", CASES, ids=[c[0] for c in CASES])
def test_tokens_and_labels_equal_trl_sft_trainers(tokenizers, model, tmp_path, which, case, fmt, rows,
                                                  completion_only_loss, assistant_only_loss):
    if which == "bos" and (fmt == "conversational" or rows is MESSAGES):
        pytest.skip("a chat template renders its own special tokens: the BOS tokenizer adds nothing there")
    tokenizer = tokenizers[which]
    expected = trl_rows(model, tokenizer, rows, completion_only_loss, assistant_only_loss, tmp_path)
    got = ours(tokenizer, fmt, rows, completion_only_loss, assistant_only_loss)
    assert got == expected
    masked = sum(x == sft.IGNORE for r in got for x in r["labels"])
    # the case masks what it should: nothing, or some but not all of each example
    if fmt == "text" or (fmt == "conversational" or completion_only_loss is False) and not assistant_only_loss:
        assert masked == 0
    else:
        assert all(0 < sum(x == sft.IGNORE for x in r["labels"]) < len(r["labels"]) for r in got)
    if which == "bos" and fmt != "conversational":
        assert all(r["input_ids"][0] == tokenizer.bos_token_id for r in got)


@pytest.mark.parametrize("case,fmt,rows,completion_only_loss,assistant_only_loss",
                         [c for c in CASES if c[0] in ("text", "strings-completion-only", "conversational-assistant-only")],
                         ids=["text", "strings-completion-only", "conversational-assistant-only"])
def test_truncation_keeps_the_start_as_trl_does(tokenizers, model, tmp_path, case, fmt, rows, completion_only_loss,
                                               assistant_only_loss):
    tokenizer = tokenizers["plain"]
    n = TRUNCATED[case]
    expected = trl_rows(model, tokenizer, rows, completion_only_loss, assistant_only_loss, tmp_path, n)
    got = ours(tokenizer, fmt, rows, completion_only_loss, assistant_only_loss, n, truncation=True)
    assert got == expected
    assert got and max(len(r["input_ids"]) for r in got) == n
