"""A sensitivity recommendation as an llm-compressor recipe (compressed-tensors' per-layer weight schemes).

One `QuantizationModifier` whose `config_groups` hold one group per width, each targeting the layers at that width
by their full names; 16-bit layers are in no group (and `lm_head` is ignored). Weights only, round-to-nearest
min-max (no calibration data needed): `strategy: group` with the study's `group_size`, or `channel` (one scale per
output row) when it is unset or 0, as qlbench's own `int` format; symmetric as the study's `symmetric`.

llm-compressor is not a qlbench dependency: 0.14.0.1 installs beside torch 2.13 only with transformers >=5.15,
<=5.17 (qlbench's lock has 5.24). In an environment of its own, `oneshot(model=FOLDER, recipe=RECIPE,
output_dir=OUT)` quantizes with it and saves a compressed-tensors checkpoint (checked there on a Llama-shaped model:
each layer's `quantization_scheme.weights.num_bits` is the recipe's). Nothing here imports it, nor torch or polars.
"""

from __future__ import annotations

from qlbench import registry
from qlbench.errors import QlbenchError
from qlbench.export.recommendation import widths
from qlbench.study import masks as masklang


def recipe(row: dict, lay: masklang.Layout, quant) -> dict:
    """The recipe (as a dict; YAML with `text`) for one recommendation row; `quant`: the study's `Quant`."""
    if lay.arch == "gpt2":
        raise QlbenchError("llm-compressor quantizes nn.Linear layers; GPT-2's are Conv1D (no recipe for gpt2 models)")
    by_name = widths(row, lay, quant.high_bits)
    simulated = registry.simulated_widths()  # compressed-tensors' int weights, as qlbench's simulated int widths
    bad = sorted({w for w in by_name.values() if w < 16 and w not in simulated})
    if bad:
        raise QlbenchError(f"llm-compressor's int weights are {registry.span(simulated)} bits, not "
                           f"{', '.join(map(str, bad))}")
    weights = {"type": "int", "symmetric": bool(quant.symmetric)}
    weights |= ({"strategy": "group", "group_size": quant.group_size} if quant.group_size else {"strategy": "channel"})
    groups: dict[str, dict] = {}
    for name, w in by_name.items():
        if w < 16:
            g = groups.setdefault(f"int{w}", {"targets": [], "weights": {"num_bits": w, **weights}})
            g["targets"].append(name)
    return {"quant_stage": {"quant_modifiers": {"QuantizationModifier": {"ignore": ["lm_head"],
                                                                        "config_groups": groups}}}}


def text(r: dict) -> str:
    import yaml

    return yaml.safe_dump(r, sort_keys=False)
