"""Text for pretraining and fine-tuning: offline corpora, datasets by name, and token blocks for the loop.

Offline sources need no download: `pydoc` (the standard library's help topics, 465 KB of English) and
`chatterbot` (the chatterbot-corpus wheel: 2,306 English prompt -> reply pairs; its `trivia` topic holds 260
question/answer pairs). Other datasets come by hub name or as a local JSON/JSONL/parquet file, through `datasets`,
in one of three formats: `dialogue` (DailyDialog-like: a list of turns, or prompt/response), `instruction`
(Alpaca-like: instruction, input, output) and `qa` (SQuAD-like: context, question, answers).
"""

from __future__ import annotations

from qlbench.errors import QlbenchError
from qlbench.data.example import Example, package_dir, split


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def chatterbot_files(topics: list[str] | None = None) -> list:
    """The corpus's English topic files (or those `topics`; an unknown one is one line naming the known)."""
    folder = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    paths = sorted(folder.glob("*.yml"))
    if topics:
        unknown = sorted(set(topics) - {p.stem for p in paths})
        if unknown:
            raise QlbenchError(f"chatterbot topics {unknown}: unknown; topics: {', '.join(p.stem for p in paths)}")
        paths = [p for p in paths if p.stem in topics]
    return paths


def chatterbot_pairs(topics: list[str] | None = None) -> list[Example]:
    """Consecutive (utterance, reply) pairs of every English chatterbot-corpus conversation (or those `topics`)."""
    import yaml

    paths = chatterbot_files(topics)
    pairs = []
    for path in paths:
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            if not isinstance(conv, list):  # one trivia entry is a bare string: not a conversation
                continue
            turns = [str(t).strip() for t in conv]
            pairs += [Example(a, b) for a, b in zip(turns, turns[1:])]
    return pairs


def chatterbot_conversations(topics: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """Every English chatterbot-corpus conversation of two or more turns, as (origin, turns): the offline chat data
    of task sft (the corpus is BSD-3-Clause; its conversations alternate a user's line and a reply)."""
    import yaml

    paths = chatterbot_files(topics)
    out = []
    for path in paths:
        for i, conv in enumerate(yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", [])):
            if isinstance(conv, list) and len(conv) >= 2:
                out.append((f"chatterbot {path.name} conversation {i + 1}", [str(t).strip() for t in conv]))
    return out


def load_examples(spec: dict, name: str) -> tuple[list[Example], list[Example]]:
    """A dataset from config.yaml -> (train, eval) examples."""
    if spec["format"] == "classification":  # labelled texts: qlbench.data.labelled
        from qlbench.data import labelled

        return labelled.load(spec, name)
    if spec["source"] == "chatterbot":
        examples = chatterbot_pairs(spec.get("topics"))
        if spec["format"] == "qa":  # trivia: the reply is the answer
            examples = [Example(e.prompt, e.response, (e.response,)) for e in examples]
        if spec["format"] == "extractive":  # contexts of several exchanges, built on each side of the split
            from qlbench.data import passages

            train, held_out = split(examples, spec.get("eval_fraction", 0.1))
            k, copies = spec.get("passages", 3), spec.get("copies", 4)
            held_out = passages.build(held_out, k, copies)
            return passages.build(train, k, copies), held_out[: spec.get("max_eval") or len(held_out)]
    elif spec["source"] in ("hub", "path"):
        from qlbench.data import datasets_io

        examples = datasets_io.examples(spec, name, spec.get("split", "train"))
        if spec.get("eval_split") and spec["source"] == "hub":  # a local file is split by eval_fraction
            examples = examples[: spec["max_examples"]] if spec.get("max_examples") else examples
            held_out = datasets_io.examples(spec, name, spec["eval_split"])
            return examples, held_out[: spec["max_eval"]] if spec.get("max_eval") else held_out
    else:
        raise QlbenchError(f"dataset {name!r}: source {spec['source']!r} is not supported")
    if spec.get("max_examples"):  # a subset, then the split (QLoRA's diagnostic: 1,000 examples, 90/10)
        examples = examples[: spec["max_examples"]]
    if not examples:
        raise QlbenchError(f"dataset {name!r}: no examples")
    train, held_out = split(examples, spec.get("eval_fraction", 0.1))
    if spec.get("max_eval"):
        held_out = held_out[: spec["max_eval"]]
    return train, held_out


def corpus_text(sources: list[str], dataset_spec: dict | None = None) -> str:
    """Pretraining text: the named corpora; chatterbot contributes only its training split."""
    parts = []
    for source in sources:
        if source == "pydoc":
            parts.append(pydoc_text())
        elif source == "chatterbot":
            train, _ = split(chatterbot_pairs(), (dataset_spec or {}).get("eval_fraction", 0.1))
            parts.append("\n\n".join(e.text for e in train))
    return "\n\n".join(parts)
