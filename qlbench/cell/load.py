"""Stage 2: load the base model and its tokenizer, the dataset's examples, and the task's data (token blocks and a
batch sampler that is a pure function of seed and step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qlbench.cell.context import Context
from qlbench.study import settings as settings_tree


@dataclass
class Base:
    model: object  # the base, frozen, on the cell's device; later stages quantize it and wrap it in LoRA
    tokenizer: object
    data: object  # the task's prepared data (train and eval blocks, held-out examples)
    sample: Callable  # step -> training batch
    train_examples: int  # N of the bounds: examples the LoRA trains on
    base_params: int  # parameters of the unquantized base, tied weights once


def base_dtype(setting: str, device):
    """The dtype the base is loaded in: as named, or for `auto` by where it runs (`qlbench.study.settings.base_dtype`,
    the rule's one home)."""
    import torch

    return getattr(torch, settings_tree.base_dtype(setting, gpu=device.type == "cuda"))


def head_kwargs(ctx: Context) -> dict | None:
    """What a task's new head needs to know before loading (a classifier: its labels), from the dataset entry."""
    if not hasattr(ctx.task, "head_kwargs"):
        return None
    return ctx.task.head_kwargs(ctx.study.config["datasets"][ctx.settings.data.dataset])


def load(ctx: Context) -> Base:
    from qlbench.cell import measure
    from qlbench.data import examples, models, prepared
    from qlbench.data.example import Example
    from qlbench.tasks import Batch

    settings, cell = ctx.settings, ctx.cell
    dataset = settings.data.dataset
    dtype = base_dtype(settings.runtime.base_dtype, ctx.device)
    resources = ctx.study.resources
    model, tokenizer = models.load(ctx.spec, cell.model, resources, dtype=dtype, head=ctx.task.HEAD,
                                   head_kwargs=head_kwargs(ctx))
    ctx.log.info(f"base weights in {str(dtype).removeprefix('torch.')} ({settings.runtime.base_dtype})")

    def make_data():
        read = getattr(ctx.task, "load_examples", examples.load_examples)  # a task may read formats of its own
        train_ex, eval_ex = read(ctx.study.config["datasets"][dataset], dataset)
        if cell.n_train is not None:
            train_ex = train_ex[: cell.n_train]
        return len(train_ex), ctx.task.prepare(tokenizer, train_ex, eval_ex, settings)

    # made once per (model, dataset, data settings), memory-mapped by the cells after
    key = prepared.key(ctx.study.config, cell.model, ctx.identity, cell.n_train)
    n_train, data = prepared.cached(Path(resources) / "prepared", f"{cell.model}-{dataset}-{key}", make_data,
                                    types=(*prepared.dataclasses_in(ctx.task), Batch, Example))  # what data is made of
    ctx.log.info(f"data: {data.describe(n_train)}")
    model.to(ctx.device)
    model.requires_grad_(False)  # a task's new head trains: attach turns it on
    return Base(model=model, tokenizer=tokenizer, data=data, train_examples=n_train,
                sample=ctx.task.batch_sampler(data.train, settings.train.batch_size, cell.seed),
                base_params=measure.unique_params(model))  # before quantization packs any weight
