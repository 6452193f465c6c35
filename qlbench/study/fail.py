"""The `fail` setting's grammar — planted trouble, TESTING ONLY: the `fail` setting makes chosen cells fail, die or use memory on purpose,
so the tests can check retries, resumption and out-of-memory handling on a real cluster.

    fail: MODE[:CELL]            or a list of them
    MODE  first      raise on the cell's first attempt only (a marker file `.failed-once` remembers it)
          always     raise on every attempt
          kill@N     SIGKILL itself during step N, on the first attempt only (a hard kill mid-training)
          mem@MB     hold MB MiB of touched memory for the whole run (every attempt; for out-of-memory tests)
    CELL  which cells: a glob over the cell path `<model>[/n<N>]/b<bits>/r<rank>/<mask>/s<seed>`, or a run of
          its `/`-separated parts (`b4/r4/all`); every cell when left out.

e.g. `fail: ["first:b4/r4/all", "kill@15:b4/r4/b1.mlp"]`. It is no part of a cell's identity: it is left out
of the row's settings and of the config hash, so a planted run's numbers compare with a clean one's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from qlbench.errors import QlbenchError

_MODE = re.compile(r"^(first|always|kill@(\d+)|mem@(\d+))$")


@dataclass(frozen=True)
class Plant:
    mode: str  # first | always | kill | mem
    amount: int | None  # the step of kill@N, the MiB of mem@MB
    cell: str | None  # pattern; None: every cell

    def matches(self, cell_path: str) -> bool:
        if self.cell is None:
            return True
        if any(c in self.cell for c in "*?["):
            return fnmatchcase(cell_path, self.cell) or fnmatchcase(cell_path, f"*/{self.cell}")
        return f"/{self.cell.strip('/')}/" in f"/{cell_path}/"


def parse(value) -> list[Plant]:
    """The `fail` setting (None, a string or a list of strings) -> its plants; a bad one is a QlbenchError."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    plants = []
    for item in items:
        mode, _, cell = str(item).partition(":")
        m = _MODE.match(mode.strip())
        if not m:
            raise QlbenchError(f"fail: {item!r}: use first|always|kill@STEP|mem@MB, optionally :CELL-PATTERN")
        amount = m.group(2) or m.group(3)
        plants.append(Plant(mode.split("@")[0], int(amount) if amount else None, cell.strip() or None))
    return plants


def for_cell(value, cell_path: str) -> list[Plant]:
    return [p for p in parse(value) if p.matches(cell_path)]
