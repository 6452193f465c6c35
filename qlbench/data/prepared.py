"""A cell's data — its examples read, tokenized and cut by its task — made once per (model, dataset, data settings)
and memory-mapped by every later cell, instead of each cell parsing and tokenizing the same corpus again (~1 s a
cell for chatterbot on a CPU).

The cache lives under `resources/prepared/`, one file per key, written atomically by the first cell that needs it
(cells running at once may both write it: same bytes, last rename wins). The key holds everything the data could
depend on: the model (its tokenizer; for a prepared base, the base's stamp), the dataset entry, the cell's n_train
and every setting except those `qlbench.study.settings` knows change no token (`data_blind_keys`): a key it does
not know is in the key, so a needless cache miss may cost a second, but a wrong hit never costs the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from qlbench.data import models
from qlbench.study.config import config_hash, resources_root
from qlbench.study.settings import data_blind_keys



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
                        "settings": data_settings, "n_train": n_train})


def cached(folder: Path, name: str, make: Callable[[], object]):
    """`make()`'s value, from `folder/name.pt` (tensors memory-mapped) when a cell made it before."""
    import torch

    path = Path(folder) / f"{name}.pt"
    if path.exists():
        try:
            return torch.load(path, mmap=True, weights_only=False)
        except Exception:  # a cache file from another torch, or damaged: make it again
            pass
    value = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(value, tmp)
        os.replace(tmp, path)
    except Exception:  # a read-only resources folder, or data that cannot be pickled: prepared per cell, as before
        pass
    return value
