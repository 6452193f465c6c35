"""One training or evaluation example, whatever dataset it came from."""

from __future__ import annotations

from dataclasses import dataclass


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
