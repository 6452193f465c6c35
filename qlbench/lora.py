"""Attach LoRA adapters (peft) to a (possibly quantized) base, and read their weights back.

`targets` is a preset — `qv`, `kv`, `attn` (every attention projection), `attn_mlp` (and the MLP) — or a list of
module names (suffixes, as peft matches them). GPT-2 computes Q, K and V with one fused `c_attn`, whose output
columns are [Q | K | V]; a preset or an entry `c_attn[q,v]` restricts its LoRA to some of those slices by keeping the
other rows of B at zero (zeroed at init, their gradient masked), so ΔW = B·A is exactly zero outside the slices.
"""

from __future__ import annotations

import re

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
    from qlbench.errors import QlbenchError

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


def slice_rows(out_features: int, parts: tuple[str, ...]):
    """A 0/1 row mask over the fused output [Q | K | V] that keeps `parts`."""
    import torch

    width = out_features // 3
    keep = torch.zeros(out_features)
    for part in parts:
        start = "qkv".index(part) * width
        keep[start : start + width] = 1.0
    return keep


def attach(model, rank: int, settings: dict, arch: str):
    from peft import LoraConfig, get_peft_model

    modules, slices = resolve(settings["targets"] or DEFAULT_TARGETS[arch], arch)
    # GPT-2's Conv1D stores weights as (in, out); a bnb-replaced one is a plain (out, in) Linear
    fan_in_fan_out = arch == "gpt2" and settings["backend"] != "bnb"
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_for(settings["lora_alpha"], rank),
        lora_dropout=settings["lora_dropout"],
        target_modules=modules,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if slices:
        restrict_slices(model, slices)
    return model


def restrict_slices(model, slices: dict[str, tuple[str, ...]]) -> None:
    """Keep the rows of lora_B outside the chosen Q/K/V slices at exactly zero (init and every update)."""
    import torch

    for name, module in model.named_modules():
        parts = next((p for suffix, p in slices.items() if name == suffix or name.endswith("." + suffix)), None)
        if parts is None or not hasattr(module, "lora_B"):
            continue
        for linear in module.lora_B.values():
            keep = slice_rows(linear.weight.shape[0], parts).to(linear.weight.device, linear.weight.dtype)
            with torch.no_grad():
                linear.weight.mul_(keep[:, None])
            # Adam and decoupled weight decay leave a parameter with zero gradient at zero
            linear.weight.register_hook(lambda grad, keep=keep: grad * keep[:, None])


def adapter_state(model) -> dict:
    """The LoRA weights as saved in adapter.safetensors; quantized adapters are saved as the values they compute with."""
    from peft import get_peft_model_state_dict

    from qlbench.quant import adapters

    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return adapters.effective_state(model, state)
