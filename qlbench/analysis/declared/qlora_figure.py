"""The QLoRA study's four panels: memory per rank, r*, the per-layer ΔW similarity matrix and the target variants
(each where the grid supports it)."""

from __future__ import annotations

import polars as pl

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="qlora_figure",
    summary="LoRA against QLoRA in four panels: memory, r*, per-layer ΔW similarity, target variants",
    needs=["cells", "similarity.pairs", "similarity.layers", "similarity.rstar"],
    applies="references",
    outputs={"figure": "figures/qlora.png"},
    report={
        "figure": (
            "Similarity",
            "",
            "The QLoRA study's four panels: peak memory of LoRA on the 16-bit base against QLoRA on the quantized "
            "base, per rank; similarity of the quantized cell's adapter and outputs to the 16-bit one against rank, "
            "with the 0.95 threshold and r*; cos(ΔW, ΔW₁₆) per LoRA module and rank at the lowest width; and, where "
            "the study makes LoRA targets an axis, the eval-loss cost of the quantized base per target variant."
        ),
    },
)


def run(job) -> str:
    from qlbench.analysis.figures import qlora_figure

    read = {k: pl.read_parquet(p) if p.exists() else pl.DataFrame() for k, p in job.inputs.items()}
    cells, pairs = read["cells"], read["similarity.pairs"]
    out = job.outputs["figure"]
    out.parent.mkdir(parents=True, exist_ok=True)
    qlora_figure(cells, pairs, read["similarity.layers"], read["similarity.rstar"], out,
                 f"{job.folder.name}: LoRA against QLoRA")
    found = "; ".join(f"{r['metric']} at {r['bits']} bits: r* = {r['r_star']}"
                      for r in read["similarity.rstar"].iter_rows(named=True))
    return f"{job.folder.name}: {pairs.height} pairs -> {out}" + (f"; {found}" if found else "")
