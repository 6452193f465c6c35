"""A cell's data — its examples read, tokenized and cut by its task — made once per (model, dataset, data settings)
and memory-mapped by every later cell, instead of each cell parsing and tokenizing the same corpus again (~1 s a
cell for chatterbot on a CPU).

The cache lives under `resources/prepared/`, one file per key, written atomically by the first cell that needs it
(cells running at once may both write it: same bytes, last rename wins). The key holds everything the data could
depend on: the model (its tokenizer; for a prepared base, the base's stamp), the dataset entry, the cell's n_train
and every setting except those `qlbench.study.settings` knows change no token (`data_blind_keys`): a key it does
not know is in the key, so a needless cache miss may cost a second, but a wrong hit never costs the numbers.
A file is read back as data only (`qlbench.data.safe_load`): whoever can write into the folder cannot make a cell
run code.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Callable

from qlbench.data import models, safe_load
from qlbench.errors import QlbenchError
from qlbench.study.config import config_hash, resources_root
from qlbench.study.settings import data_blind_keys

# in the key: 2 reads back as data only (its Batch pickled as a dict), which 1's files are not; 3 holds extractive
# QA's offsets as a tensor (2's lists of tuples took ~10x as long to read back as data)
FORMAT = 3


def key(config: dict, model: str, settings: dict, n_train: int | None) -> str:
    """`settings`: the cell's flat settings (its identity will do: planted trouble reads no data)."""
    spec = config["models"][model]
    stamp = None
    if spec["source"] in models.PREPARED:  # a base prepared again may come with another tokenizer
        base = Path(models.base_dir(resources_root(config), model))
        stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(base.glob("*token*"))] if base.exists() else None
    blind = data_blind_keys()
    data_settings = {k: v for k, v in settings.items() if k not in blind}
    return config_hash({"model": spec, "base": stamp, "dataset": config["datasets"][settings["dataset"]],
                        "settings": data_settings, "n_train": n_train, "format": FORMAT})


def dataclasses_in(module) -> tuple[type, ...]:
    """The dataclasses a module defines (a task's `Data`, ...): the classes its prepared data may be made of."""
    return tuple(v for v in vars(module).values()
                 if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__)


def cached(folder: Path, name: str, make: Callable[[], object], types: tuple[type, ...] = ()):
    """`make()`'s value, from `folder/name.pt` (tensors memory-mapped) when a cell made it before. Read back as data
    only: tensors, numbers, strings, containers and the classes in `types`; a file that holds anything else (a
    pickled object someone put there) is refused in one line (QlbenchError), nothing in it run."""
    import torch

    path = Path(folder) / f"{name}.pt"
    if path.exists():
        try:
            return safe_load.load(path, "prepared data", types, mmap=True)
        except QlbenchError:
            raise
        except Exception:  # a cache file from another torch, or damaged: make it again
            pass
    value = make()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(value, tmp)
    except Exception:  # a read-only resources folder, or data that cannot be pickled: prepared per cell, as before
        tmp.unlink(missing_ok=True)
        return value
    try:
        try:  # read back as the next cell will: a class missing from `types` fails here, in the cell that made it
            with torch.serialization.safe_globals(list(types)):
                torch.load(tmp, mmap=True, weights_only=True)
        except pickle.UnpicklingError as e:
            raise TypeError(f"prepared data {name} would not read back as data: it holds {safe_load.culprit(e)} "
                            f"(classes allowed: {', '.join(t.__name__ for t in types) or 'none'})") from e
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return value
