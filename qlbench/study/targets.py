"""LoRA targets as a study names them — pure config, no torch: presets, Q/K/V slices of a fused projection, alpha.

`targets` is a preset — `qv`, `kv`, `attn` (every attention projection), `attn_mlp` (and the MLP) — or a list of
module names (suffixes, as peft matches them). GPT-2 computes Q, K and V with one fused `c_attn`, whose output
columns are [Q | K | V]; a preset or an entry `c_attn[q,v]` restricts its LoRA to some of those slices
(`qlbench.cell.lora` keeps the other rows of B at zero).
"""

from __future__ import annotations

import re

from qlbench.errors import QlbenchError

PRESETS: dict[str, dict[str, list[str]]] = {
    "gpt2": {
        "qv": ["c_attn[q,v]"],
        "kv": ["c_attn[k,v]"],
        "attn": ["c_attn", "attn.c_proj"],
        "attn_mlp": ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    },
    "llama": {
        "qv": ["q_proj", "v_proj"],
        "kv": ["k_proj", "v_proj"],
        "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "attn_mlp": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
}
PRESET_NAMES = tuple(PRESETS["gpt2"])  # the same names for every architecture
DEFAULT_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}  # when a study names none
FUSED_QKV = {"gpt2": "c_attn"}  # module whose output is [Q | K | V], in that order
_SLICED = re.compile(r"^(?P<module>[\w.]+)\[(?P<parts>[qkv](?:,[qkv])*)\]$")


def alpha_for(setting, rank: int) -> float:
    """`lora_alpha` as a number: `2r` means twice the rank, a plain number is itself."""
    if isinstance(setting, str) and setting.endswith("r"):
        return float(setting[:-1] or 1) * rank
    return float(setting)


def label(targets) -> str:
    """The `targets` setting as one string for the results row: the preset's name, or the list joined by commas."""
    return targets if isinstance(targets, str) else ",".join(targets)


def resolve(targets, arch: str) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """A `targets` setting -> (module names for peft, {fused module: the Q/K/V slices it adapts})."""
    if isinstance(targets, str):
        if targets not in PRESETS[arch]:
            raise QlbenchError(f"targets {targets!r}: unknown preset; presets: {', '.join(PRESETS[arch])}")
        targets = PRESETS[arch][targets]
    modules, slices = [], {}
    for entry in targets:
        m = _SLICED.match(entry)
        if m is None:
            modules.append(entry)
            continue
        module, parts = m.group("module"), tuple(dict.fromkeys(m.group("parts").split(",")))
        if FUSED_QKV.get(arch) is None:
            raise QlbenchError(f"targets {entry!r}: {arch} has no fused QKV module; name its projections directly")
        if FUSED_QKV[arch] != module.split(".")[-1]:
            raise QlbenchError(f"targets {entry!r}: only {arch}'s fused {FUSED_QKV[arch]} has Q/K/V slices")
        modules.append(module)
        slices[module] = parts
    return list(dict.fromkeys(modules)), slices
