"""Why a requantization can score below the model it rounds: one finished cell's merged model with its LoRA delta
scaled, and how far a GGUF type's rounding moves the weights along that delta.

    python tests/tools/delta_scale.py backends-smollm2-gguf smollm2/b16/r8/none/s0 --type Q5_1

Prints the eval loss of base + c·delta for each --scales value (is the adapter short of its best step?), then the
type's image of the merged model against its image of the base: the change the delta causes after rounding,
projected on the delta (1.0: rounding passes the delta through; above 1: it amplifies it). The numbers on
docs/studies/backends.md's "Serving formats" come from this command.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("cell", help="its folder under cells/, e.g. smollm2/b16/r8/none/s0")
    ap.add_argument("--type", default="Q5_1", help="a GGUF type gguf-py quantizes")
    ap.add_argument("--scales", default="0,1,2,4,8", help="multiples of the delta to evaluate")
    ap.add_argument("--config", default="config.yaml")
    args = ap.parse_args()

    import torch

    from qlbench.cell.rebuild import rebuild
    from qlbench.cli.group import load_study
    from qlbench.data import models
    from qlbench.quant import gguf

    st = load_study((args.config,), args.study)
    cell = rebuild(st, Path(st.results) / st.name, args.cell)
    names = [n for n, m in cell.merged.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    base, _ = models.load(cell.ctx.spec, cell.ctx.cell.model, cell.ctx.study.resources, dtype=torch.float32)
    base.to(cell.ctx.device)
    w0 = {n: base.get_submodule(n).weight.detach().clone() for n in names}
    delta = {n: cell.merged.get_submodule(n).weight.detach() - w0[n] for n in names}
    for c in (float(s) for s in args.scales.split(",")):
        scaled = copy.deepcopy(cell.merged)
        for n in names:
            scaled.get_submodule(n).weight.data.copy_(w0[n] + c * delta[n])
        print(f"base + {c:g}·delta: eval loss {cell.eval_loss(scaled):.4f}")
    rounded_merged, rounded_base = copy.deepcopy(cell.merged), base
    for model in (rounded_merged, rounded_base):
        gguf.deploy(model, {n: (16, args.type) for n in names}, cell.ctx.settings)
    moved = sum(float(((rounded_merged.get_submodule(n).weight - rounded_base.get_submodule(n).weight) * delta[n]).sum())
                for n in names)
    size = sum(float((delta[n] * delta[n]).sum()) for n in names)
    print(f"{args.type} of the merged model: eval loss {cell.eval_loss(rounded_merged):.4f}; of the base: "
          f"{cell.eval_loss(rounded_base):.4f}; its change along the delta: {moved / size:.2f} deltas")


if __name__ == "__main__":
    main()
