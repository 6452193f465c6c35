"""Attach LoRA adapters (peft) to a (possibly quantized) base, and read their weights back.

Which modules get an adapter is the study's `targets` (`qlbench.study.targets`). Where a target is a Q/K/V slice of
GPT-2's fused `c_attn`, the rows of B outside the slices stay at exactly zero (zeroed at init, their gradient
masked), so ΔW = B·A is exactly zero there.
"""

from __future__ import annotations

from qlbench.study.targets import DEFAULT_TARGETS, alpha_for, resolve


def slice_rows(out_features: int, parts: tuple[str, ...]):
    """A 0/1 row mask over the fused output [Q | K | V] that keeps `parts`."""
    import torch

    width = out_features // 3
    keep = torch.zeros(out_features)
    for part in parts:
        start = "qkv".index(part) * width
        keep[start : start + width] = 1.0
    return keep


def attach(model, rank: int, settings, arch: str, task_type: str | None = "CAUSAL_LM",
           head_modules: tuple[str, ...] = ()):
    """LoRA on the study's targets (`settings`: the cell's settings tree); a task's new head (`head_modules`) trains
    beside it, one head for every adapter."""
    from peft import LoraConfig, get_peft_model

    from qlbench import registry

    modules, slices = resolve(settings.lora.targets or DEFAULT_TARGETS[arch], arch)
    # GPT-2's Conv1D stores weights as (in, out); a backend that replaces it by a Linear stores (out, in)
    fan_in_fan_out = arch == "gpt2" and not registry.backend(settings.quant.backend).linear_layout
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_for(settings.lora.alpha, rank),
        lora_dropout=settings.lora.dropout,
        target_modules=modules,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=task_type,
    )
    model = get_peft_model(model, config)
    for name in head_modules:
        model.get_submodule(f"base_model.model.{name}").requires_grad_(True)
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
    state = adapters.effective_state(model, state)
    for name, p in model.named_parameters():  # a trained head (extractive QA's span head) is part of the adapter
        if p.requires_grad and "lora_" not in name and "modules_to_save" not in name and "original_module" not in name:
            state[name.removeprefix("base_model.model.")] = p.detach().cpu().contiguous()
    return state
