"""The `deploy` setting: the serving format a cell's merged model is requantized in, beside its own backend's.

A value names a backend that declares deploy presets (`Backend(deploys=(...))`) and, after a colon, one of them:
`gguf:Q4_0`, `compressed_tensors:w4a16`. The bare name (`deploy: gguf`) gives each module the backend's own type for
the width the cell's plan has it at (modules the plan leaves at 16 bits stay as they are). A mapping adds per-layer
choices over it: `{format: gguf:Q4_0, layers: {b0: Q8_0, b3.mlp: Q5_1}}` — masks (qlbench.study.masks) to presets of
the same backend, applied in order over the format's; `16` leaves a layer alone. A list of names
(`[gguf:Q8_0, gguf:Q5_0, gguf:Q4_0]`) sweeps formats: each cell requantizes its one merged model in every one of
them (no training repeated; the formats compared on the same adapter), its row's columns suffixed `@NAME`
(`deployed_eval_loss@gguf:Q4_0`). Unset (the default), nothing changes: no cell's identity or row moves. No torch:
the config's checks run it before any job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from qlbench.errors import QlbenchError

KEEP = "16"  # a per-layer choice that leaves the layer alone

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_]+(:[A-Za-z0-9_]+)?$"}
SCHEMA = {"oneOf": [
    {"type": "null"},
    _NAME,
    {"type": "array", "minItems": 1, "uniqueItems": True, "items": _NAME},
    {"type": "object", "additionalProperties": False, "required": ["format"],
     "properties": {"format": {"type": "string", "pattern": "^[A-Za-z0-9_]+(:[A-Za-z0-9_]+)?$"},
                    "layers": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}}}}]}


@dataclass(frozen=True)
class Deploy:
    backend: str
    preset: str | None  # None: each module at its plan width's own type
    layers: Mapping[str, str] = field(default_factory=dict)  # mask -> preset (or KEEP), in order
    label: str = ""  # as a row records it

    def choices(self, plan: dict[str, int], lay) -> dict[str, tuple[int, str | None]]:
        """module -> (its width in the cell's plan, 16 where unplanned; the preset it is deployed in, None: its
        width's own type) of every module that is deployed quantized."""
        from qlbench.study import masks

        widths = {m: plan.get(m, 16) for m in lay.all_names()}
        picked: dict[str, str | None] = {m: self.preset for m in widths}
        for mask, preset in self.layers.items():
            for m in masks.resolve(mask, lay):
                picked[m] = preset
        return {m: (widths[m], p) for m, p in picked.items()
                if p != KEEP and not (p is None and widths[m] >= 16)}


def parse(value) -> Deploy | None:
    """A config's `deploy` value (a string or a mapping; None: unset), checked against the backends' declarations."""
    from qlbench import registry

    if value is None:
        return None
    spec, layers = (value["format"], dict(value.get("layers") or {})) if isinstance(value, Mapping) else (value, {})
    name, _, preset = str(spec).partition(":")
    found = registry.backends().get(name)
    able = [b for b, d in registry.backends().items() if d.deploys]
    if found is None or not found.deploys:
        raise QlbenchError(f"deploy {spec!r}: {name!r} is not a deploy format (those: {', '.join(able) or 'none'})")
    for p in [preset] * bool(preset) + [str(v) for v in layers.values()]:
        if p != KEEP and p not in found.deploys:
            raise QlbenchError(f"deploy {spec!r}: {name} has no preset {p!r} (it has {', '.join(found.deploys)})")
    label = str(spec) if not layers else json.dumps({"format": str(spec), "layers": layers}, separators=(",", ":"))
    return Deploy(name, preset or None, {str(k): str(v) for k, v in layers.items()}, label)


def parse_all(value) -> list[Deploy]:
    """Every format a `deploy` value names: [] unset, one, or a list's in order."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [parse(v) for v in value]
    return [parse(value)]


def suffix(value, d: Deploy) -> str:
    """What a format's row columns end with: nothing for a single format, `@NAME` for one of a list."""
    return f"@{d.label}" if isinstance(value, (list, tuple)) else ""


def check(value, lay, where: str) -> None:
    """One-line errors before any job: an unknown format or preset, a layer mask that names nothing."""
    from qlbench.study import masks

    try:
        found = parse_all(value)
    except QlbenchError as e:
        raise QlbenchError(f"{where}.{e}") from None
    for mask in (m for d in found for m in d.layers):
        try:
            masks.resolve(mask, lay)
        except QlbenchError as e:
            raise QlbenchError(f"{where}.deploy layers: {e}") from None
