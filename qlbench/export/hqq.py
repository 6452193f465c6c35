"""A sensitivity recommendation (a width per block or module) as an HQQ config that loads: one entry per linear.

`qlbench sensitivity` writes results/STUDY/sensitivity/recommendation.parquet: per (model, n_train, rank, level) a
`bit_map` ({unit: width}, units `b3` or `b3.attn.c_attn`; the integer program) or a `mask` at `bits` (the count
budget), every other layer at the study's high_bits. `config` turns one such row into JSON: `layers` maps every
quantizable linear's full name to hqq's `{nbits, group_size, axis}`, or null where it stays 16-bit; the group size
and axis are the study's (`group_size`, 64 when unset as in hqq's and transformers' defaults; `hqq_axis`).

How it loads, and why not otherwise: transformers 5.24 builds `HqqConfig(dynamic_config=...)` but its
`from_pretrained(..., quantization_config=HqqConfig(...))` raises "QuantizationMethod.HQQ is not available yet and
will be supported soon". hqq's own `AutoHQQHFModel.quantize_model(model, quant_config={...})` keys its dict by
*linear tag* (a name with its block numbers taken out: `model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`), so
it gives every block the same width; a dict keyed by full names falls through to its "one config for every layer"
branch and fails (KeyError 'offload_meta'). So `load_hqq` quantizes layer by layer with hqq's `HQQLinear` (what
`quantize_model` builds for each layer), and uses `quantize_model` itself when the map is the same in every block
(the JSON's `hqq_quant_config`, tag-keyed, is then what one passes it). GPT-2's `Conv1D` becomes an (out, in)
`nn.Linear` first: hqq quantizes only `nn.Linear`.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlbench.errors import QlbenchError
from qlbench.export.recommendation import widths
from qlbench.registry import backend
from qlbench.study import masks as masklang

FORMAT = "qlbench-hqq/1"
DEFAULT_GROUP = 64  # qlbench.quant.hqq.DEFAULT_GROUP (imported there with torch; a test keeps the two equal)


def hqq_tag(name: str) -> str:
    """hqq's linear tag of a module name (hqq.models.base.name_to_linear_tag): no `model`, `layers` or numbers."""
    return ".".join(n for n in name.split(".") if n not in ("model", "layers") and not n.isnumeric())


def config(row: dict, lay: masklang.Layout, quant, study: str = "") -> dict:
    """The exported JSON for one recommendation row; `quant`: the study's `Quant` settings (high_bits, group size,
    axis)."""
    allowed = backend("hqq").widths["int"]
    by_name = widths(row, lay, quant.high_bits)
    bad = sorted({w for w in by_name.values() if w < 16 and w not in allowed})
    if bad:
        raise QlbenchError(f"HQQ cannot quantize to {', '.join(map(str, bad))} bits (its widths: "
                           f"{', '.join(map(str, allowed))})")
    group = DEFAULT_GROUP if quant.group_size is None else (quant.group_size or None)
    layers = {n: None if w >= 16 else {"nbits": w, "group_size": group, "axis": quant.hqq_axis}
              for n, w in by_name.items()}
    tags: dict[str, dict | None] = {}
    uniform = True
    for n, c in layers.items():
        t = hqq_tag(n)
        if t in tags and tags[t] != c:
            uniform = False
        tags.setdefault(t, c)
    meta = {k: row[k] for k in ("model", "n_train", "rank", "level", "budget_bits", "budget_fraction", "avg_bits",
                                "predicted_degradation", "mask", "bits") if k in row}
    return {"format": FORMAT, "study": study, "arch": lay.arch, "n_layer": lay.n_layer, "recommendation": meta,
            "layers": layers, "hqq_quant_config": tags if uniform else None}


def write(cfg: dict, path: Path) -> Path:
    from qlbench.results import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(cfg, indent=1, sort_keys=False) + "\n")
    return path


def load_hqq(model, config_path, compute_dtype=None, device: str = "cpu", via: str = "auto"):
    """`model` (an HF causal LM, or the folder of one) with the exported HQQ config at `config_path` applied, in
    place; returns the model. `via`: `layers` (hqq's HQQLinear, layer by layer), `quantize_model` (hqq's
    `AutoHQQHFModel.quantize_model` with the tag-keyed config: only when every block has the same widths) or
    `auto` (quantize_model where it can, else layers)."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    from qlbench.quant.formats import as_linear, set_module

    cfg = json.loads(Path(config_path).read_text())
    if cfg.get("format") != FORMAT:
        raise QlbenchError(f"{config_path}: not a qlbench HQQ export (format {cfg.get('format')!r})")
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model, dtype=compute_dtype or torch.float32)
    modules = dict(model.named_modules())
    missing = [n for n in cfg["layers"] if n not in modules]
    if missing:
        raise QlbenchError(f"{config_path}: the model has no {missing[0]} ({len(missing)} layers missing)")
    dtype = compute_dtype or next(model.parameters()).dtype
    tags = cfg.get("hqq_quant_config")
    if via == "quantize_model" and tags is None:
        raise QlbenchError(f"{config_path}: widths differ between blocks; hqq's quantize_model cannot take them")
    for name, c in cfg["layers"].items():  # Conv1D -> Linear (hqq sees only nn.Linear)
        if c is not None and type(modules[name]) is not torch.nn.Linear:
            set_module(model, name, as_linear(modules[name]))
    if tags is not None and via in ("auto", "quantize_model"):
        from hqq.models.hf.base import AutoHQQHFModel

        qc = {t: None if c is None else BaseQuantizeConfig(**c) for t, c in tags.items()}
        core = getattr(model, "model", model)
        where = device if hasattr(core, "layers") else {n: device for n, _ in model.named_modules() if n}
        AutoHQQHFModel.quantize_model(model, quant_config=qc, compute_dtype=dtype, device=where)  # GPT-2: no layers
        return model
    for name, c in cfg["layers"].items():
        if c is not None:
            linear = model.get_submodule(name)
            set_module(model, name, HQQLinear(linear, BaseQuantizeConfig(**c), compute_dtype=dtype, device=device,
                                              del_orig=True))
    return model


def layer_widths(model, names) -> dict[str, int]:
    """Each named layer's width as loaded: HQQLinear's own `meta['nbits']`, 16 for a plain Linear or Conv1D."""
    from hqq.core.quantize import HQQLinear

    out = {}
    for name in names:
        m = model.get_submodule(name)
        out[name] = int(m.meta["nbits"]) if isinstance(m, HQQLinear) else 16
    return out
