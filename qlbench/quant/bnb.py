"""The bitsandbytes backend: the planned linears become real `Linear4bit` (NF4/FP4) or `Linear8bitLt` (LLM.int8) modules.

Unlike `fake`, the base really holds packed weights, so its memory is the memory a QLoRA user gets. bitsandbytes
has two weight formats: at 4 bits `format` picks NF4 (`nf`) or FP4 (`fp`), with `double_quant` quantizing the
absmax scales again; at 8 bits it is always LLM.int8 (row-wise absmax int8, outlier threshold 6.0), whatever
`format` says. GPT-2's `Conv1D` stores (in, out); its replacement is an (out, in) Linear, so LoRA on it takes
`fan_in_fan_out=False` (qlbench.cell.lora does that). lm_head is never in a plan (masks name block linears only).
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import is_conv1d, set_module
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

# bitsandbytes' only 8-bit weight format is LLM.int8: with bnb, 8 bits is LLM.int8 whatever the format
BACKEND = Backend(
    name="bnb",
    summary="bitsandbytes: real NF4 / FP4 (Linear4bit, double quant optional) and LLM.int8 (Linear8bitLt) weights",
    widths={"int": (8,), "nf": (4, 8), "fp": (4, 8)},
    linear_layout=True,
    group_sizes="4 bits: blocks of 64 (or group_size); 8 bits: per row (LLM.int8)",
    row_scaled=(8,),
    bytes_per_param="blockwise",
    names={8: "LLM.int8"},
)

INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold, transformers' default (llm_int8_threshold)
QUANT_TYPE = {"nf": "nf4", "fp": "fp4"}


def _bnb():
    try:
        import bitsandbytes
    except ImportError as e:  # the backend is the only user of bitsandbytes in a cell
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"backend 'bnb' needs bitsandbytes: pip install bitsandbytes ({e})") from None
    return bitsandbytes


def _compute_dtype(settings) -> torch.dtype:
    return getattr(torch, settings.runtime.compute_dtype or "float32")


def _linear_weight(module) -> torch.Tensor:
    """The weight as an (out, in) float tensor, whether the module is an nn.Linear or GPT-2's Conv1D."""
    w = module.weight.detach()
    return (w.t() if is_conv1d(module) else w).contiguous()


def to_4bit(module, settings, device: torch.device):
    """An nn.Linear/Conv1D -> a quantized bnb Linear4bit on `device` (bitsandbytes quantizes on `.to(device)`)."""
    bnb = _bnb()
    w = _linear_weight(module)
    out_f, in_f = w.shape
    quant = settings.quant
    quant_type = QUANT_TYPE[quant.format]
    new = bnb.nn.Linear4bit(in_f, out_f, bias=module.bias is not None, compute_dtype=_compute_dtype(settings),
                            compress_statistics=bool(quant.double_quant), quant_type=quant_type,
                            device="meta")
    new.weight = bnb.nn.Params4bit(w, requires_grad=False, blocksize=quant.group_size or 64,
                                   compress_statistics=bool(quant.double_quant), quant_type=quant_type,
                                   module=new).to(device)
    new.quant_state = new.weight.quant_state
    if module.bias is not None:
        new.bias = torch.nn.Parameter(module.bias.detach().clone().to(device), requires_grad=False)
    # Trap 1 of ENVIRONMENT.md: on AVX512-BF16 CPUs an eval forward repacks the weight for inference only,
    # and the next training step fails; the plain path is also the one that matches the fake backend.
    new.support_avx512bf16_for_cpu = False
    return new


def to_8bit(module, device: torch.device):
    """An nn.Linear/Conv1D -> an LLM.int8 Linear8bitLt on `device` (frozen int8 weights, no fp16 copy)."""
    bnb = _bnb()
    w = _linear_weight(module)
    out_f, in_f = w.shape
    new = bnb.nn.Linear8bitLt(in_f, out_f, bias=module.bias is not None, has_fp16_weights=False,
                              threshold=INT8_THRESHOLD, device="meta")
    # Int8Params quantizes when it moves off the CPU, or on a CPU -> CPU move: so start from the CPU
    new.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
    if module.bias is not None:
        new.bias = torch.nn.Parameter(module.bias.detach().clone().to(device), requires_grad=False)
    return new


def dequantized(module) -> torch.Tensor:
    """What a bnb module computes with, as an (out, in) float32 tensor."""
    bnb = _bnb()
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    cb = module.weight.CB if module.weight.CB is not None else module.state.CB
    scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
    return cb.float() * scb.float().unsqueeze(1) / 127.0


def dequantized_weight(module) -> torch.Tensor:
    """The backend's common name for what a quantized module computes with ((out, in), float)."""
    return dequantized(module)


def held_bytes(module) -> int:
    """Bytes the quantized weight really occupies: packed codes plus its scales (absmax; with double quant, the
    8-bit absmax and their own fp32 absmax). The 16- and 256-entry code books are format constants, not counted."""
    bnb = _bnb()
    data = module.weight.data
    total = data.numel() * data.element_size()
    if isinstance(module, bnb.nn.Linear4bit):
        qs = module.weight.quant_state
        scales = [qs.absmax] + ([qs.state2.absmax] if qs.nested else [])
    else:
        scales = [module.weight.SCB if module.weight.SCB is not None else module.state.SCB]
    return total + sum(t.numel() * t.element_size() for t in scales)


@torch.no_grad()
def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree; the format is its `quant`, the 4-bit compute dtype its `runtime`'s."""
    modules = dict(model.named_modules())
    stats = []
    for name, bits in plan.items():
        module = modules[name]
        device = module.weight.device
        w = _linear_weight(module).float()
        if bits == 4:
            new, fmt = to_4bit(module, settings, device), QUANT_TYPE[settings.quant.format]
        elif bits == 8:
            new, fmt = to_8bit(module, device), "int8"
        else:  # study.check_settings rejects these before any job starts
            raise ValueError(f"bitsandbytes cannot quantize to {bits} bits")
        set_module(model, name, new)
        row = error_stats(name, bits, w, dequantized(new).to(w.device))
        row.update(format=fmt, weight_bytes=held_bytes(new))
        stats.append(row)
    return stats
