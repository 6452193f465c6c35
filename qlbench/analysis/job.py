"""What `run(job)` of an analysis gets: its study, its inputs and where its outputs go, as its declaration names them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    study: Any  # the loaded study (qlbench.study.config.Study)
    folder: Path  # results/STUDY
    inputs: dict[str, Any]  # need -> its file (a Path), or its value for a computed need (registry.COMPUTED)
    outputs: dict[str, Path]  # output key -> its file
    options: dict[str, Any] = field(default_factory=dict)  # `qlbench analyze --set KEY=VALUE`

    def option(self, key: str, default):
        """An option given on the command line, read as the default's type."""
        return type(default)(self.options[key]) if key in self.options else default


def make(declaration, study, folder: Path, computed: dict[str, Any] | None = None, options=None) -> Job:
    """The job of `declaration` (a registry.Analysis) on the study whose results are in `folder`."""
    inputs = {need: folder / rel for need, rel in declaration.needed_files().items()}
    inputs |= {need: value for need, value in (computed or {}).items() if need in declaration.needs}
    outputs = {key: folder / rel for key, rel in declaration.outputs.items()}
    return Job(study, folder, inputs, outputs, dict(options or {}))
