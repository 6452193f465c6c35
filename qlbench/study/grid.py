"""A study -> its cells and their output folders: the one source of truth for the Snakefile, `qlbench sweep`,
`qlbench status` and the aggregates.

A cell's folder is `<model>[/n<n_train>]/b<bits>/r<rank>/<mask>/s<seed>` under `results/<study>/cells/`.
A 16-bit cell quantizes nothing, so it does not depend on the mask: it runs once, as mask `none`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qlbench.errors import QlbenchError
from qlbench.study.config import Study

# What a cell's folder holds; the cell writes row.parquet last, so a folder with a row is a finished cell. The row
# carries the training curve; CURVE is the file cells wrote it to before, read for such cells only.
ROW, CURVE, ADAPTER, LAYERS, GENERATIONS, PROBE = (
    "row.parquet", "curve.parquet", "adapter.safetensors", "layers.parquet", "generations.parquet", "probe.parquet")
LOG, CHECKPOINT = "log.txt", "checkpoint.pt"
CHECKPOINT_STAMP = "checkpoint.pt.config"  # the config hash the checkpoint was made under

_PATH = re.compile(
    r"^(?P<model>[^/]+)(?:/n(?P<n_train>\d+))?(?:/t(?P<targets>[a-z_]+))?/b(?P<bits>\d+)/r(?P<rank>\d+)/(?P<mask>[^/]+)"
    r"/s(?P<seed>\d+)$"
)
CELL_PATTERN = re.sub(r"\?P<\w+>", "?:", _PATH.pattern[1:-1])  # the same, unanchored, no names: for Snakemake


@dataclass(frozen=True, order=True)
class Cell:
    model: str
    bits: int
    rank: int
    mask: str
    seed: int
    n_train: int | None = None
    targets: str | None = None  # a LoRA target preset, when the study makes targets an axis

    @property
    def path(self) -> str:
        n = f"/n{self.n_train}" if self.n_train is not None else ""
        t = f"/t{self.targets}" if self.targets is not None else ""
        return f"{self.model}{n}{t}/b{self.bits}/r{self.rank}/{self.mask}/s{self.seed}"

    def args(self) -> list[str]:
        """The coordinates as `qlbench run` options."""
        out = ["--model", self.model, "--bits", str(self.bits), "--rank", str(self.rank),
               "--mask", self.mask, "--seed", str(self.seed)]
        if self.n_train is not None:
            out += ["--n-train", str(self.n_train)]
        if self.targets is not None:
            out += ["--targets", self.targets]
        return out

    def coords(self) -> dict:
        """The coordinates; `targets` only where it is an axis (so the hashes of other cells stay as they were)."""
        out = {"model": self.model, "bits": self.bits, "rank": self.rank, "mask": self.mask, "seed": self.seed,
               "n_train": self.n_train}  # asdict order; no deep copy
        if self.targets is not None:
            out["targets"] = self.targets
        return out


def cells(study: Study) -> list[Cell]:
    out: list[Cell] = []
    for model in study.models:
        for n_train in study.n_train:
            for targets in study.targets:
                for bits in study.bits:
                    masks = ["none"] if bits == 16 else study.masks[model]
                    for rank in study.ranks:
                        for mask in masks:
                            for seed in study.seeds:
                                out.append(Cell(model, bits, rank, mask, seed, n_train, targets))
    return list(dict.fromkeys(out))


def parse(path: str) -> Cell:
    """A cell folder (relative to `cells/`) -> its coordinates."""
    m = _PATH.match(path.strip("/"))
    if not m:
        raise QlbenchError(f"{path!r} is not a cell path (<model>[/n<N>]/b<bits>/r<rank>/<mask>/s<seed>)")
    n = m.group("n_train")
    return Cell(m.group("model"), int(m.group("bits")), int(m.group("rank")), m.group("mask"),
                int(m.group("seed")), int(n) if n is not None else None, m.group("targets"))


def cell_dir(results: str, study: str, cell: Cell) -> str:
    return f"{results}/{study}/cells/{cell.path}"
