"""Quantized cells against their 16-bit references (qlbench/analysis/similarity.py): token match, embedding cosine
and per-layer ΔW similarity, and r*, the smallest rank at similarity >= 0.95. Reads stored outputs only."""

from __future__ import annotations

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="similarity",
    summary="quantized cells against their 16-bit references (outputs and per-layer ΔW), and r*",
    # every row, through the aggregate (a cell's row is written last: where it is, its generations and adapter are
    # too); one input instead of one per cell keeps the DAG small
    needs=["cells"],
    applies="references",
    outputs={"pairs": "similarity.parquet", "layers": "similarity_layers.parquet", "rstar": "rstar.parquet"},
)


def run(job) -> str:
    from qlbench.analysis import similarity as sim
    from qlbench.results import write_parquet

    pairs, layers, skipped = sim.pairs(job.study, str(job.folder.parent))
    write_parquet(pairs, job.outputs["pairs"])
    write_parquet(layers, job.outputs["layers"])
    write_parquet(sim.r_star(pairs), job.outputs["rstar"])
    return (f"{job.study.name}: {pairs.height} quantized/16-bit pairs, {layers.height} layer rows"
            + (f", {len(skipped)} skipped for missing outputs (first: {skipped[0]})" if skipped else ""))
