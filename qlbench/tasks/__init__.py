"""Tasks, one file each: what a cell trains and measures — the head on the base, the batches, the loss, the metrics.

A task module exposes:
- `TASK = qlbench.registry.Task(...)`: its declaration (read from the source, so the config's checks need no torch);
- `NAME`, `HEAD` (the transformers auto class the base loads with), `PEFT_TASK` (peft's task type, or None) and
  `HEAD_MODULES` (modules of a new head that train beside the LoRA weights);
- `prepare(tokenizer, train_examples, eval_examples, settings) -> Data` (`.train`, `.eval`, `.describe(n)`);
- `batch_sampler(train, batch_size, seed)`: step -> batch, a pure function of (seed, step);
- `loss(model, batch)`, `eval_loss(model, eval, batch_size, device, autocast_dtype)`;
- `metrics(model, tokenizer, data, device, autocast_dtype, batch_size) -> dict`: the task's scores beyond the loss
  (EM/F1, accuracy), cheap enough to take at every width a trained model is evaluated at; `loss` too where the
  same passes give it (then the eval loss is not taken again);
- `outputs(model, tokenizer, data, device, autocast_dtype) -> list[dict]`: one row per probed example, in the
  schema of `qlbench.tasks.generate.frame` (generations, or predicted spans), and `summary(rows) -> dict`: the
  task's metrics of those rows (the cell's own scores, with no second pass).

The cell's stages ask the task and stay the same. A batch is a tensor or a `Batch` (named tensors).
"""

from __future__ import annotations

from qlbench.registry import task_module as get  # noqa: F401  (a task module by name)


class Batch(dict):
    """Named tensors of equal first dimension, moved and sliced together, as the loop and probes use a tensor."""

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.items()})

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Batch({k: v[key] for k, v in self.items()})

    @property
    def shape(self):
        return next(iter(self.values())).shape

    def __reduce__(self):  # from a plain dict: torch's weights-only load calls an allowed class, fills no dict subclass
        return Batch, (dict(self),)
