"""Supervised fine-tuning data as TRL names it, read and tokenized as TRL's `SFTTrainer` does (trl 1.16,
`SFTTrainer._prepare_dataset`): the tokens and the labels of each example are what its processed `train_dataset`
holds (tests/unit/data/test_sft_parity.py holds them to it).

Formats (a dataset entry's `format`): `text` (`{"text"}`), `prompt_completion` (`{"prompt", "completion"}`, both
strings or both lists of messages) and `conversational` (`{"messages": [{"role", "content"}, ...]}`), read from a
JSON/JSONL/parquet file, a folder of them, a `datasets.save_to_disk` folder, or a hub dataset's split. The older
formats (`instruction`, `dialogue`, ...) come in as prompt-completion records (the prompt as causal_lm lays it out,
a newline after it). Every record remembers where it came from (file and line, or row), for one-line errors.

Tokens and labels (labels unshifted, -100 where the loss does not look):
- text: the text with EOS appended (unless it ends with it), tokenized as `tokenizer(text)` (special tokens as the
  tokenizer adds them); the loss on every token;
- prompt-completion, strings: EOS appended to the completion; the prompt and prompt+completion tokenized apart, the
  completion starting where the two diverge; the loss on the completion only unless `completion_only_loss: false`;
- prompt-completion, messages: the prompt rendered with the generation prompt, prompt+completion rendered whole,
  the same divergence point (no EOS appended: the template ends the turn);
- conversational: the conversation rendered whole; the loss on every token, or with `assistant_only_loss` on the
  template's `{% generation %}` spans only.
Longer than max_length: refused in one line, or with `truncation` its first max_length tokens (TRL's keep_start);
an example with no label left is dropped, as TRL drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlbench.errors import QlbenchError
# TRL's format names; a save_to_disk folder's own files; the JSON / JSON-lines reader local inputs use
from qlbench.study.local import SAVED, SFT_FORMATS as FORMATS, records as json_records

IGNORE = -100
FILES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Record:
    origin: str  # `file line N`, `file row N`, `NAME split S row N`: where an error points
    text: str | None = None
    prompt: object = None  # a string, or a list of messages
    completion: object = None
    messages: list | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "conversational" if self.messages is not None else \
            "prompt_completion"

    @property
    def chat(self) -> bool:
        return self.messages is not None or isinstance(self.prompt, list)


@dataclass(frozen=True)
class Options:
    max_length: int
    completion_only_loss: bool = True
    assistant_only_loss: bool = False
    truncation: bool = False


def options(settings) -> Options:
    """The tokenization options of a cell's settings tree (max_length: its seq_len; TRL's default completion-only)."""
    s = settings.sft
    return Options(max_length=settings.train.seq_len,
                   completion_only_loss=True if s.completion_only_loss is None else s.completion_only_loss,
                   assistant_only_loss=s.assistant_only_loss, truncation=s.truncation)


# --- reading -------------------------------------------------------------------------------------------------------

def rows(spec: dict, name: str, split: str = "train") -> list[tuple[str, dict]]:
    """(origin, row) of every record of one split of a dataset entry in a TRL format."""
    if spec["source"] == "hub":
        from qlbench.data import datasets_io

        ds = datasets_io.load_records(spec, name, split)
        return [(f"{spec['name']} split {split} row {i}", dict(r)) for i, r in enumerate(ds)]
    if spec["source"] == "chatterbot":
        return chatterbot_rows(spec)
    if spec["source"] != "path":
        raise QlbenchError(f"dataset {name!r}: format {spec['format']} reads source path, hub or chatterbot, not "
                           f"{spec['source']!r}")
    path = Path(spec.get("name") or "")
    if not path.exists():
        raise QlbenchError(f"dataset {name!r}: no such file or folder {spec.get('name')!r}")
    if path.is_dir() and any((path / f).exists() for f in SAVED):
        return _saved(path, name, split)
    files = sorted(f for f in path.iterdir() if f.suffix in FILES) if path.is_dir() else [path]
    if not files:
        raise QlbenchError(f"dataset {name!r}: {path} holds no JSON, JSONL or parquet file")
    out = []
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            out += [(f"{file} row {i}", r) for i, r in enumerate(pq.read_table(file).to_pylist())]
        elif file.suffix in (".json", ".jsonl"):
            out += list(json_records(file, f"dataset {name!r}", limit=None, empty_ok=True))
        else:
            raise QlbenchError(f"dataset {name!r}: {file} is not JSON, JSONL or parquet")
    return out


def chatterbot_rows(spec: dict) -> list[tuple[str, dict]]:
    """chatterbot-corpus's conversations in a TRL format, offline: turns alternate user and assistant, cut to end on
    an assistant turn; `conversational` keeps the whole conversation, `prompt_completion` makes the last reply the
    completion (a message list) and the turns before it the prompt, `text` joins the turns one a line."""
    from qlbench.data.examples import chatterbot_conversations

    out = []
    for origin, turns in chatterbot_conversations(spec.get("topics")):
        turns = turns[: len(turns) // 2 * 2]
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        if spec["format"] == "conversational":
            out.append((origin, {"messages": messages}))
        elif spec["format"] == "prompt_completion":
            out.append((origin, {"prompt": messages[:-1], "completion": messages[-1:]}))
        else:
            out.append((origin, {"text": "\n".join(turns)}))
    return out


def _saved(path: Path, name: str, split: str) -> list[tuple[str, dict]]:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise QlbenchError(f"dataset {name!r}: {path} has splits {', '.join(ds)}, not {split!r}")
        ds, path = ds[split], path / split
    return [(f"{path} row {i}", dict(r)) for i, r in enumerate(ds)]


def record(origin: str, row, fmt: str, name: str) -> Record:
    """One row as a Record of its format, or one line naming the row and the field."""
    where = f"dataset {name!r}: {origin}"
    if not isinstance(row, dict):
        raise QlbenchError(f"{where}: a record must be a JSON object, not {type(row).__name__}")
    need = {"text": ("text",), "prompt_completion": ("prompt", "completion"), "conversational": ("messages",)}[fmt]
    for key in need:
        if row.get(key) is None:
            raise QlbenchError(f"{where}: no field {key!r} (format {fmt} needs {', '.join(need)})")
    if fmt == "text":
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise QlbenchError(f"{where}: field 'text' is empty or not a string")
        return Record(origin, text=row["text"])
    if fmt == "conversational":
        messages = _messages(row["messages"], f"{where}: field 'messages'")
        if not messages:
            raise QlbenchError(f"{where}: field 'messages' is empty")
        return Record(origin, messages=messages)
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise QlbenchError(f"{where}: field 'completion' is empty")
        return Record(origin, prompt=prompt, completion=completion)
    if isinstance(prompt, list) and isinstance(completion, list):
        completion = _messages(completion, f"{where}: field 'completion'")
        if not any(m["content"].strip() for m in completion):
            raise QlbenchError(f"{where}: field 'completion' is empty")
        return Record(origin, prompt=_messages(prompt, f"{where}: field 'prompt'"), completion=completion)
    raise QlbenchError(f"{where}: fields 'prompt' and 'completion' must both be strings or both lists of messages")


def _messages(value, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise QlbenchError(f"{where}: a list of messages ({{role, content}}), not {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise QlbenchError(f"{where}: message {i} needs a string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load(spec: dict, name: str) -> tuple[list[Record], list[Record]]:
    """(train, eval) records of a dataset entry: a TRL format read here, an older one as prompt-completion."""
    from qlbench.data.example import split

    if spec["format"] not in FORMATS:
        from qlbench.data import examples

        train, held_out = examples.load_examples(spec, name)
        return from_examples(train, "train"), from_examples(held_out, "eval")
    records = [record(o, r, spec["format"], name) for o, r in rows(spec, name, spec.get("split", "train"))]
    if spec.get("max_examples"):
        records = records[: spec["max_examples"]]
    if spec.get("eval_split") and spec["source"] == "hub":
        held_out = [record(o, r, spec["format"], name) for o, r in rows(spec, name, spec["eval_split"])]
        train = records
    else:
        if not records:
            raise QlbenchError(f"dataset {name!r}: no records")
        train, held_out = split(records, spec.get("eval_fraction", 0.1))
    if spec.get("max_eval"):
        held_out = held_out[: spec["max_eval"]]
    return train, held_out


def from_examples(examples: list, side: str) -> list[Record]:
    """Examples of an older format -> prompt-completion records, laid out as causal_lm's text (prompt, newline)."""
    return [Record(f"{side} example {i}", prompt=f"{e.prompt}\n", completion=e.response)
            for i, e in enumerate(examples)]


# --- tokenizing ----------------------------------------------------------------------------------------------------

def _chat(tokenizer, messages: list, where: str, **kwargs) -> dict:
    from jinja2 import TemplateError

    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    except (TemplateError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QlbenchError(f"{where}: the chat template cannot render it: {first}") from None
    return {k: list(v) for k, v in out.items()}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize(tokenizer, rec: Record, opts: Options, name: str = "") -> dict | None:
    """A record -> {input_ids, labels} as TRL's processed train_dataset holds them, plus the generation probe's
    `prompt_ids` (the prompt with the generation prompt) and `reference` (the answer's text), where it has one.
    None: truncation left no label (TRL drops such an example)."""
    where = f"dataset {name!r}: {rec.origin}" if name else rec.origin
    eos = tokenizer.eos_token
    prompt_ids, reference = None, None
    if rec.kind == "text":
        text = rec.text if rec.text.endswith(eos) else rec.text + eos
        ids = list(tokenizer(text=text)["input_ids"])
        labels = list(ids)
    elif rec.kind == "conversational":
        out = _chat(tokenizer, rec.messages, f"{where}: field 'messages'",
                    return_assistant_tokens_mask=opts.assistant_only_loss)
        ids = out["input_ids"]
        labels = _masked(ids, out.get("assistant_masks") if opts.assistant_only_loss else None)
        if opts.assistant_only_loss and all(x == IGNORE for x in labels):
            raise QlbenchError(f"{where}: field 'messages': no assistant turn for assistant_only_loss to train on")
        last = max((i for i, m in enumerate(rec.messages) if m["role"] == "assistant"), default=0)
        if last > 0:
            prompt_ids = _chat(tokenizer, rec.messages[:last], f"{where}: field 'messages'",
                               add_generation_prompt=True)["input_ids"]
            reference = rec.messages[last]["content"]
    elif rec.chat:
        prompt_ids = _chat(tokenizer, rec.prompt, f"{where}: field 'prompt'", add_generation_prompt=True)["input_ids"]
        out = _chat(tokenizer, rec.prompt + rec.completion, f"{where}: field 'completion'",
                    return_assistant_tokens_mask=opts.assistant_only_loss)
        ids = out["input_ids"]
        start = _common_prefix(prompt_ids, ids)
        completion = [0] * start + [1] * (len(ids) - start) if opts.completion_only_loss else None
        assistant = out.get("assistant_masks") if opts.assistant_only_loss else None
        labels = _masked(ids, completion, assistant)
        reference = "".join(m["content"] for m in rec.completion if m["role"] == "assistant")
    else:
        completion_text = rec.completion if rec.completion.endswith(eos) else rec.completion + eos
        prompt_ids = list(tokenizer(text=rec.prompt)["input_ids"])
        ids = list(tokenizer(text=rec.prompt + completion_text)["input_ids"])
        start = _common_prefix(prompt_ids, ids)
        labels = _masked(ids, [0] * start + [1] * (len(ids) - start) if opts.completion_only_loss else None)
        reference = rec.completion.removesuffix(eos).strip()
    if len(ids) > opts.max_length:
        if not opts.truncation:
            raise QlbenchError(f"{where}: {len(ids)} tokens, longer than max_length {opts.max_length} (the cell's "
                               "seq_len; or set truncation: true)")
        ids, labels = ids[: opts.max_length], labels[: opts.max_length]
        if all(x == IGNORE for x in labels):
            return None
    return {"input_ids": ids, "labels": labels, "prompt_ids": prompt_ids, "reference": reference,
            "origin": rec.origin}


def _masked(ids: list[int], *masks) -> list[int]:
    """TRL's `build_labels`: a token keeps its id where every applicable mask is 1, else -100."""
    masks = [m for m in masks if m is not None]
    return [t if all(bits) else IGNORE for t, *bits in zip(ids, *masks)]


def check_conversational(rec: Record, opts: Options, name: str) -> None:
    """assistant_only_loss on a record that is not a conversation (TRL refuses it too)."""
    if opts.assistant_only_loss and not rec.chat:
        raise QlbenchError(f"dataset {name!r}: {rec.origin}: assistant_only_loss needs conversational data "
                           "(messages, or prompt/completion as message lists)")
