"""An extractive QA set built offline from question -> answer pairs (chatterbot's `trivia` topic): no download.

Each example's context is `passages` exchanges ("question answer", one per line) drawn from one side of the
train/eval split; its question is one of them, and its answer is that exchange's answer, a span of the context
at a known offset. Reading it means finding the line whose question matches and taking what follows — a real
span-extraction problem (the distractors are real questions with real answers), small enough for a CPU.
Train and eval contexts are built from disjoint pairs, so no evaluation answer is seen in training.
"""

from __future__ import annotations

import random

from qlbench.data.example import Example

BUILD_SEED = 4321  # the set is a property of the dataset, not of a cell's seed


def build(pairs: list[Example], passages: int, copies: int, seed: int = BUILD_SEED) -> list[Example]:
    """`copies` examples per pair: the pair asked about, among `passages - 1` distractor pairs, in random order."""
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for i, asked in enumerate(pairs):
            others = [p for j, p in enumerate(pairs) if j != i]
            chosen = rng.sample(others, min(passages - 1, len(others))) + [asked]
            rng.shuffle(chosen)
            lines, start = [], -1
            offset = 0
            for p in chosen:
                line = f"{p.prompt} {p.response}"
                if p is asked:
                    start = offset + len(p.prompt) + 1
                lines.append(line)
                offset += len(line) + 1  # the newline
            context = "\n".join(lines)
            out.append(Example(f"Context: {context}\nQuestion: {asked.prompt}\nAnswer:", asked.response,
                               (asked.response,), context=context, question=asked.prompt, answer_start=start))
    return out
