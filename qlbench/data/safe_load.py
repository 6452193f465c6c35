"""Reading back what a cell wrote (checkpoints, prepared data) as data, never as code.

`torch.load(weights_only=True)`: torch's own unpickler builds tensors, numbers, strings, lists, tuples and dicts, and
the classes a caller names (`types`), and refuses any other class or function before calling it. A file in a shared
results or resources folder is written by whoever can write there; with a full unpickler, a `__reduce__` in it would
run in the next cell that reads it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from qlbench.errors import QlbenchError


def load(path: Path, what: str, types: tuple[type, ...] = (), **kwargs):
    """`torch.load(path)` as data, with `types` allowed besides torch's own (tensors, containers, numbers, strings);
    a file holding anything else is refused with a one-line QlbenchError that names it (`what`: "checkpoint", ...)."""
    try:
        with torch.serialization.safe_globals(list(types)):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise QlbenchError(f"{what} {path} holds {culprit(e)}, which is not data: refused, nothing in it ran "
                           "(delete the file if you did not write it)") from None


def culprit(e: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, in a few words: the class or function the file names, or the
    first line of its reason (torch wraps it in a paragraph of advice to load the file unsafely, left out here)."""
    inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
    text = str(inner)
    named = re.search(r"GLOBAL (\S+)", text)
    if named:
        return named.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return f"what torch's weights-only load refuses ({first.rstrip('.')})"
