"""One training or evaluation example, whatever dataset it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    answers: tuple[str, ...] = ()  # every accepted answer (QA data), for EM/F1; empty otherwise

    @property
    def text(self) -> str:
        return f"{self.prompt}\n{self.response}"
