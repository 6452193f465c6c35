"""The model under attack, rebuilt from a finished classification cell, and its post-training-quantized versions.

The cell's folder holds the LoRA weights and the trained head (`adapter.safetensors`). The classifier is the base
with a sequence-classification head, LoRA attached as the cell attached it, those weights loaded, and LoRA merged
into the base weights: W + (α/r)·B·A. PTQ then quantizes the merged block linears (the head stays in float, as
lm_head does in every cell): the `fake` backend rounds them at any width, `bnb` makes them LLM.int8 (8 bits) or
NF4 (4 bits) modules. The causal LM beside it, the base itself, is GBDA's fluency and similarity model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qlbench.errors import QlbenchError
from qlbench.study.config import Study
from qlbench.study.grid import ADAPTER, Cell


@dataclass
class Victim:
    classifier: object  # merged, plain float model, eval mode
    lm: object  # the base causal LM, frozen
    tokenizer: object
    data: object  # the classification task's prepared data
    train_texts: list[str]
    module_names: list[str]  # the block linears PTQ quantizes


def classifier_from_lm(lm, head: dict):
    """A `*ForSequenceClassification` sharing the causal LM's body weights (copied), with a new head."""
    from transformers import AutoModelForSequenceClassification

    config = lm.config.__class__.from_dict({**lm.config.to_dict(), **head})
    model = AutoModelForSequenceClassification.from_config(config)
    missing, _ = model.load_state_dict(lm.state_dict(), strict=False)
    body_missing = [k for k in missing if not k.startswith("score.")]
    if body_missing:
        raise QlbenchError(f"the classifier's body does not match the causal LM: missing {body_missing[:3]}")
    return model.to(next(lm.parameters()).dtype)


def load_adapter(model, path: Path, head_modules: tuple[str, ...]):
    """LoRA weights and the head from a cell's adapter.safetensors into a peft model, then merged: a plain model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(path))
    head = {k: v for k, v in state.items() if any(f"{m}." in k for m in head_modules) and "lora_" not in k}
    trained_head = {k: v for k, v in head.items() if "original_module" not in k}  # peft's untrained copy
    result = set_peft_model_state_dict(model, {k: v for k, v in state.items() if k not in head or k in trained_head})
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise QlbenchError(f"{path}: LoRA weights the model has no place for: {unexpected[:3]}")
    merged = model.merge_and_unload()
    for key, value in trained_head.items():  # base_model.model.score.weight -> score.weight
        name = key[key.index(next(f"{m}." for m in head_modules if f"{m}." in key)):]
        name = name.replace(".modules_to_save.default", "")
        with torch.no_grad():
            merged.get_parameter(name).copy_(value)
    if not trained_head:
        raise QlbenchError(f"{path} holds no trained head ({', '.join(head_modules)}): was the cell a classifier?")
    return merged


def build(study: Study, cell: Cell, settings, cell_dir: Path, device) -> Victim:
    """The fine-tuned classifier of a finished 16-bit classification cell, and the base causal LM (`settings`: the
    study's settings tree)."""
    from qlbench.cell import lora
    from qlbench.data import labelled, models
    from qlbench.tasks import classification

    if not (cell_dir / ADAPTER).exists():
        raise QlbenchError(f"{cell_dir}: no {ADAPTER}; run the cell first")
    spec = study.model(cell.model)
    lm, tokenizer = models.load(spec, cell.model, study.resources, dtype=torch.float32)
    dataset = study.config["datasets"][settings.data.dataset]
    classifier = classifier_from_lm(lm, {**classification.head_kwargs(dataset), "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(cell.seed)
    peft_model = lora.attach(classifier, cell.rank, settings.replace(backend="fake"), spec["arch"],
                             task_type=classification.PEFT_TASK, head_modules=classification.HEAD_MODULES)
    classifier = load_adapter(peft_model, cell_dir / ADAPTER, classification.HEAD_MODULES)
    train_ex, eval_ex = labelled.load(dataset, settings.data.dataset)
    data = classification.prepare(tokenizer, train_ex, eval_ex, settings)
    lm.to(device).eval().requires_grad_(False)
    classifier.to(device).eval().requires_grad_(False)
    return Victim(classifier, lm, tokenizer, data, [e.prompt for e in train_ex],
                  study.layout(cell.model).all_names())


def quantized(victim: Victim, backend: str, bits: int, settings):
    """A copy of the merged classifier with every block linear quantized after training (PTQ): in the study's format
    where the backend has it at `bits`, else in the backend's first format that has (bitsandbytes at 4: NF4)."""
    import copy

    from qlbench import quant, registry

    model = copy.deepcopy(victim.classifier)
    declared = registry.backend(backend)
    fmt = settings.quant.format
    if not declared.can(fmt, bits):
        fmt = next(f for f, widths in declared.widths.items() if bits in widths)
    quant.backend(backend).apply(model, {m: bits for m in victim.module_names},
                                 settings.replace(format=fmt, double_quant=False))
    return model.eval()
