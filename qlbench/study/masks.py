"""The layer-mask language: a string such as `b0-3.attn.c_proj+b9-11` <-> the set of module names it quantizes.

Grammar: terms joined by `+`; a term is `all`, `none`, a selector, or a block range optionally followed by `.selector`.
A block range is `bK` or `bI-J`; a selector is a group (`attn`, `mlp`) or a module suffix (`attn.c_proj`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qlbench.errors import QlbenchError

# Module names of the quantizable linears inside each transformer block, per architecture.
ARCHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpt2": ("transformer.h.{i}.", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
    "llama": (
        "model.layers.{i}.",
        (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        ),
    ),
}
GROUPS = ("attn", "mlp")
_BLOCK = re.compile(r"^b(\d+)(?:-(\d+))?$")
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SINGLE = re.compile(r"b\d+(\.[A-Za-z_.]+)?")  # one block, or one module of one block: what sensitivity ranks


@dataclass(frozen=True)
class Layout:
    """Where the quantizable modules of one model live: `n_layer` blocks of the same modules."""

    arch: str
    n_layer: int

    @property
    def modules(self) -> tuple[str, ...]:
        return ARCHS[self.arch][1]

    def name(self, block: int, module: str) -> str:
        return ARCHS[self.arch][0].format(i=block) + module

    def all_names(self) -> list[str]:
        return [self.name(b, m) for b in range(self.n_layer) for m in self.modules]

    def selectors(self) -> list[str]:
        return list(GROUPS) + list(self.modules)


def layout(arch: str, n_layer: int) -> Layout:
    if arch not in ARCHS:
        raise QlbenchError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return Layout(arch, n_layer)


def _group_of(module: str) -> str:
    head = module.split(".")[0]
    return "attn" if "attn" in head or "attention" in head else "mlp"


def _select(lay: Layout, selector: str, mask: str) -> list[str]:
    if selector in GROUPS:
        return [m for m in lay.modules if _group_of(m) == selector]
    if selector in lay.modules:
        return [selector]
    raise QlbenchError(
        f"mask {mask!r}: unknown module {selector!r}; valid: {', '.join(lay.selectors())}"
    )


def _blocks(lay: Layout, term: str, mask: str) -> list[int]:
    m = _BLOCK.match(term)
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi:
        raise QlbenchError(f"mask {mask!r}: block range {term!r} runs backwards")
    if hi >= lay.n_layer:
        raise QlbenchError(
            f"mask {mask!r}: block {hi} does not exist (blocks are b0-{lay.n_layer - 1})"
        )
    return list(range(lo, hi + 1))


def single_block_or_module(mask: str) -> str:
    """`block` for `bK`, `module` for `bK.module` (one selector of one block), empty for any other mask."""
    m = _SINGLE.fullmatch(mask)
    return "" if m is None else "module" if m.group(1) else "block"


def resolve(mask: str, lay: Layout) -> list[str]:
    """The full module names a mask selects, in model order; raises QlbenchError naming the problem."""
    if not mask or not _SAFE.match(mask):
        raise QlbenchError(f"mask {mask!r}: use letters, digits, '.', '-', '_' and '+' only")
    chosen: set[tuple[int, str]] = set()
    for term in mask.split("+"):
        if term == "all":
            chosen |= {(b, m) for b in range(lay.n_layer) for m in lay.modules}
        elif term == "none":
            continue
        else:
            head, _, rest = term.partition(".")
            if _BLOCK.match(head):
                blocks = _blocks(lay, head, mask)
                modules = _select(lay, rest, mask) if rest else list(lay.modules)
            elif head == "" or not term:
                raise QlbenchError(f"mask {mask!r}: empty term")
            else:
                blocks = list(range(lay.n_layer))
                modules = _select(lay, term, mask)
            chosen |= {(b, m) for b in blocks for m in modules}
    return [lay.name(b, m) for b in range(lay.n_layer) for m in lay.modules if (b, m) in chosen]


def expand(entry: str | dict, lay: Layout) -> list[str]:
    """A study's `masks` entry -> mask strings: a string as is, `{each: block}` / `{each: module}` as a family."""
    if isinstance(entry, str):
        return [entry]
    if entry.get("each") == "block":
        return [f"b{b}" for b in range(lay.n_layer)]
    if entry.get("each") == "module":
        return [f"b{b}.{m}" for b in range(lay.n_layer) for m in lay.modules]
    raise QlbenchError(f"masks entry {entry!r}: use a mask string, {{each: block}} or {{each: module}}")
