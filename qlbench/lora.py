"""Attach LoRA adapters (peft) to a (possibly quantized) base, and read their weights back."""

from __future__ import annotations


def alpha_for(setting, rank: int) -> float:
    """`lora_alpha` as a number: `2r` means twice the rank, a plain number is itself."""
    if isinstance(setting, str) and setting.endswith("r"):
        return float(setting[:-1] or 1) * rank
    return float(setting)


def attach(model, rank: int, settings: dict, arch: str):
    from peft import LoraConfig, get_peft_model

    # GPT-2's Conv1D stores weights as (in, out); a bnb-replaced one is a plain (out, in) Linear
    fan_in_fan_out = arch == "gpt2" and settings["backend"] != "bnb"
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_for(settings["lora_alpha"], rank),
        lora_dropout=settings["lora_dropout"],
        target_modules=list(settings["targets"]),
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def adapter_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
