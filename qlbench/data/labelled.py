"""Labelled texts for the classification task: a dataset by hub name or local file (AG News, IMDB, ...), or one
built offline: from the standard library's docstrings (`source: docstrings`, `qlbench.data.docstrings`: paragraphs,
their module's area the label; texts long enough to attack) or from chatterbot-corpus, its topic files the labels
(short utterances: a fast test set).

A labelled example is an `Example` whose `prompt` is the text and whose `response` is its label's name; a hub
dataset's integer labels are named by the entry's `labels:` list (in the dataset's id order). The task numbers the
names in sorted order. The chatterbot set (`source: chatterbot, format: classification`): every distinct utterance
of the chosen topics (`topics:`, one label each, in that order), utterances found in more than one topic dropped,
at most `per_class` per topic (the first ones, in file order), then the dataset's fixed train/eval split.
"""

from __future__ import annotations

from qlbench.data.example import Example, exclusive, package_dir, shuffled, split
from qlbench.errors import QlbenchError

DEFAULT_TOPICS = ("ai", "coding", "emotion", "trivia")


def label_names(spec: dict) -> list[str]:
    """The label names of a classification dataset entry (a hub dataset's in its own id order)."""
    if spec["source"] == "chatterbot":
        return list(spec.get("topics") or DEFAULT_TOPICS)
    if spec["source"] == "docstrings":
        from qlbench.data.docstrings import groups

        return list(groups(spec))
    if not spec.get("labels"):
        raise QlbenchError(f"a classification dataset from {spec['source']!r} needs `labels:` (names, in id order)")
    return [str(x) for x in spec["labels"]]


def chatterbot_topics(spec: dict) -> list[Example]:
    """Every distinct utterance of each topic file, labelled with the topic."""
    import yaml

    folder = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    topics = label_names(spec)
    missing = [t for t in topics if not (folder / f"{t}.yml").exists()]
    if missing:
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yml")))
        raise QlbenchError(f"chatterbot topics {missing}: unknown; topics: {known}")
    by_topic: dict[str, list[str]] = {}
    for topic in topics:
        said: list[str] = []
        for conv in yaml.safe_load((folder / f"{topic}.yml").read_text(encoding="utf-8")).get("conversations", []):
            if isinstance(conv, list):
                said += [str(t).strip() for t in conv if str(t).strip()]
        by_topic[topic] = list(dict.fromkeys(said))
    cap = spec.get("per_class") or None
    return [Example(text, topic) for topic, texts in exclusive(by_topic).items() for text in texts[:cap]]


def from_records(records, spec: dict, name: str) -> list[Example]:
    """Rows with a text column and an integer (or name) label column -> labelled examples."""
    names = label_names(spec)
    text_key, label_key = spec.get("text_field", "text"), spec.get("label_field", "label")
    missing = {text_key, label_key} - set(records.column_names)
    if missing:
        raise QlbenchError(f"dataset {name!r}: no column {sorted(missing)}; columns: {', '.join(records.column_names)}")
    out = []
    for row in records:
        label = row[label_key]
        label = names[label] if isinstance(label, int) and 0 <= label < len(names) else str(label)
        if label not in names:
            raise QlbenchError(f"dataset {name!r}: label {label!r} is not among labels {names}")
        out.append(Example(str(row[text_key]).strip(), label))
    return out


def load(spec: dict, name: str) -> tuple[list[Example], list[Example]]:
    """(train, eval) labelled examples of a classification dataset entry."""
    if spec["source"] == "chatterbot":
        examples = chatterbot_topics(spec)
        held_out = None
    elif spec["source"] == "docstrings":
        from qlbench.data import docstrings

        examples = docstrings.examples(spec)
        held_out = None
    elif spec["source"] in ("hub", "path"):
        from qlbench.data import datasets_io

        examples = from_records(datasets_io.load_records(spec, name, spec.get("split", "train")), spec, name)
        held_out = None
        if spec.get("eval_split"):
            held_out = from_records(datasets_io.load_records(spec, name, spec["eval_split"]), spec, name)
    else:
        raise QlbenchError(f"dataset {name!r}: source {spec['source']!r} is not supported")
    if spec.get("max_examples"):
        examples = shuffled(examples)[: spec["max_examples"]]  # hub sets are often sorted by label
    if held_out is None:
        train, held_out = split(examples, spec.get("eval_fraction", 0.1))
    else:
        train, held_out = examples, shuffled(held_out)
    if spec.get("max_eval"):
        held_out = held_out[: spec["max_eval"]]
    if not train or not held_out:
        raise QlbenchError(f"dataset {name!r}: no examples")
    return train, held_out
