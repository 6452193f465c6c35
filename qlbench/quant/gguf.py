"""The GGUF backend: the planned linears rounded to llama.cpp's types by gguf-py (`gguf.quants.quantize`), then
dequantized again (`gguf.quants.dequantize`) — a fake-quant backend: the weights stay float, hold exactly what
llama.cpp computes with for that type, and LoRA trains on them as on `fake`'s.

Types: Q8_0, Q5_0 / Q5_1, Q4_0 / Q4_1 (blocks of 32 along each row: a scale, and for the `_1` types a minimum, per
block; stored in float16), and F16 / BF16 for deploying. A cell's `bits` picks a type per width: 8 -> Q8_0, 5 ->
Q5_0, 4 -> Q4_0; `symmetric: false` picks the types with a minimum, Q5_1 and Q4_1 (gguf-py has no Q8_1 quantizer: 8
bits is Q8_0 either way). `group_size` is not read (the type fixes its block). The K-quants (Q2_K .. Q6_K, and so
llama.cpp's mixed presets Q4_K_M, Q5_K_S, ...): gguf-py 0.19 only dequantizes them (`quantize` raises
NotImplementedError), so they are not declared. A row whose length the type's block does not divide gets llama.cpp's
fallback (its llama-quant.cpp: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K / Q3_K -> IQ4_NL, then F16 if that
block does not divide the row either; llama.cpp refuses such rows for the legacy types, where this takes F16), and
the type each layer really got is layers.parquet's `module_type` and, deployed, the row's `deploy_types`.
"""

from __future__ import annotations

import torch

from qlbench.quant.formats import out_in
from qlbench.quant.stats import error_stats
from qlbench.registry import Backend

BACKEND = Backend(
    name="gguf",
    summary="GGUF (llama.cpp's types, by gguf-py): Q8_0, Q5_0/Q5_1, Q4_0/Q4_1 quantize-dequantized, float weights",
    widths={"int": (4, 5, 8)},
    group_sizes="the type's own blocks of 32 along each row (group_size is not read)",
    names={8: "Q8_0", 5: "Q5_0", 4: "Q4_0"},  # bits -> the type a width takes (type_for), and its name in tables
    names_asymmetric={8: "Q8_0", 5: "Q5_1", 4: "Q4_1"},  # `symmetric: false`: the types with a minimum per block
    unavailable={"int": {2: "gguf-py 0.19 cannot quantize Q2_K (it only dequantizes the K-quants)",
                         3: "gguf-py 0.19 cannot quantize Q3_K (it only dequantizes the K-quants)",
                         6: "gguf-py 0.19 cannot quantize Q6_K (it only dequantizes the K-quants)"}},
    deploys=("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16"),
)

# llama.cpp's fallback for a row its type's block does not divide (llama-quant.cpp), then F16
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def _gguf():
    try:
        import gguf
    except ImportError as e:
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"backend 'gguf' needs gguf: pip install gguf ({e})") from None
    return gguf


def type_for(bits: int, symmetric: bool = True) -> str:
    """The GGUF type a width takes (module docstring)."""
    table = BACKEND.names if symmetric else BACKEND.names_asymmetric
    if bits not in table:
        from qlbench.errors import QlbenchError

        raise QlbenchError(f"gguf: no type gguf-py can quantize at {bits} bits (it has {', '.join(map(str, table))}; "
                           "or name a preset: deploy gguf:Q8_0 ...)")
    return table[bits]


def fitted(name: str, row: int) -> str:
    """The type a row of `row` weights really gets: `name`, or llama.cpp's fallback where its block does not
    divide the row."""
    gguf = _gguf()
    while row % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0]:
        name = FALLBACK.get(name, "F16")
    return name


def quantized(rows: torch.Tensor, name: str):
    """An (out, in) weight in type `name` (after the fallback): (gguf-py's bytes, its dequantization as a float32
    tensor, the type)."""
    gguf = _gguf()
    name = fitted(name, rows.shape[-1])
    qtype = gguf.GGMLQuantizationType[name]
    data = gguf.quants.quantize(rows.detach().float().cpu().numpy(), qtype)
    return data, torch.from_numpy(gguf.quants.dequantize(data, qtype).copy()), name


def dequantized_weight(module) -> torch.Tensor:
    """What a quantized module computes with, as an (out, in) float tensor: its rounded float weight."""
    return out_in(module, module.weight.detach()).float()


@torch.no_grad()
def _round(model, types: dict[str, tuple[int, str]]) -> list[dict]:
    """Each module's weight replaced, in place, by its quantize-dequantize image in its type; a row per module."""
    stats = []
    for name, (bits, kind) in types.items():
        module = model.get_submodule(name)
        w = module.weight.data
        rows = out_in(module, w).float()
        data, deq, got = quantized(rows, kind)
        row = error_stats(name, bits, rows, deq.to(rows.device))
        row.update(format=got, type=got, weight_bytes=int(data.nbytes))
        stats.append(row)
        w.copy_(out_in(module, deq.to(w.device)).to(w.dtype))
    return stats


def apply(model, plan: dict[str, int], settings) -> list[dict]:
    """`settings`: the cell's settings tree; each width's type as `type_for` (its `quant.symmetric`)."""
    return _round(model, {n: (b, type_for(b, settings.quant.symmetric)) for n, b in plan.items()})


def deploy(model, choices: dict[str, tuple[int, str | None]], settings) -> list[dict]:
    """The `deploy: gguf[:TYPE]` format: module -> (its width in the plan, the type named or None: its width's)."""
    return _round(model, {n: (b, kind or type_for(b, settings.quant.symmetric)) for n, (b, kind) in choices.items()})
