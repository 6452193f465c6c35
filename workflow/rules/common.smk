# The grid comes from qlbench (one source of truth for Snakemake, `qlbench sweep` and the tests).
# The config is validated here, before any job is submitted; a problem is one line naming it.
import os
import re
import shlex
import sys
import time

from qlbench.study import grid as gridlib
from qlbench.data import models as modellib
from qlbench.study import config as studylib
from qlbench.study.identities import cell_identities
from qlbench.errors import QlbenchError
from qlbench.cluster import lock as lockmod
from qlbench.results import NUMERICS

RESULTS = studylib.results_root(config)
RESOURCES = studylib.resources_root(config)
_extra = set(workflow.config_settings.config or {}) - {"study"}
if _extra:
    sys.exit(
        f"qlbench: --config {', '.join(sorted(_extra))}: cells read studies from config files; "
        "put changes in a file and pass it with --configfile"
    )
try:
    STUDY = studylib.load(config, config.get("study"))
except QlbenchError as e:
    sys.exit(f"qlbench: {e}")  # one line, before any job; a WorkflowError would add a traceback
CELLS = gridlib.cells(STUDY)
# every cell's identity hashed once here (a dict lookup per job, not a hash: 10,000 cells build in seconds)
IDENTITY = {c.path: h for c, (_, h) in zip(CELLS, cell_identities(STUDY, CELLS))}
# A GPU from the cluster only when the study asks for one (`gpus:`), as GRES: a string resource, which a pack (group
# job) asks for once however many of its cells run at once, so they share the job's GPUs (cells per GPU); an
# integer `gpu` would be summed over them
GPUS = {"gres": f"gpu:{STUDY.tree.runtime.gpus}"} if STUDY.tree.runtime.gpus else {}
# every qlbench command reads the same config files Snakemake read
ENV = "../envs/qlbench.yaml"
CONFIG_ARGS = " ".join(f"--config {shlex.quote(str(f))}" for f in workflow.configfiles)
# When this run planned its jobs, for its cells (inherited; a pack's nested snakemake keeps its planner's): Snakemake
# deletes a job's output before it runs it, so a row another driver finished since then is restored, not made again
# (qlbench/cluster/lock.py). An environment variable, not a param: a param would change every run and rerun every cell
if not (workflow.remote_exec and lockmod.PLANNED_AT in os.environ):
    os.environ[lockmod.PLANNED_AT] = repr(time.time())


wildcard_constraints:
    study=r"[^/]+",
    model=r"[^/]+",
    cell=gridlib.CELL_PATTERN,


def cell_dir(cell):
    return gridlib.cell_dir(RESULTS, STUDY.name, cell)


def cell_rows(wildcards):
    return [f"{cell_dir(c)}/row.parquet" for c in CELLS]


def cell_hash(wildcards):
    identity = IDENTITY.get(wildcards.cell)  # a cell outside the grid (a validation cell) is hashed on its own
    return identity or studylib.cell_identity(STUDY, gridlib.parse(wildcards.cell))[1]


def base_hash(wildcards):
    return studylib.config_hash(config["models"][wildcards.model])


def validation_rows(wildcards):
    """The cells of the recommended mixed-precision masks (known once the sensitivity checkpoint has run)."""
    import polars as pl

    recommended = pl.read_parquet(checkpoints.sensitivity.get(study=wildcards.study).output.recommendation)
    cells = {
        gridlib.Cell(r["model"], r["bits"], r["rank"], r["mask"], seed, r.get("n_train"))
        for r in recommended.iter_rows(named=True)
        if r["mask"] != "none" and r.get("runnable", True)  # a map of several low widths is not one cell
        for seed in STUDY.seeds
    }
    return [f"{cell_dir(c)}/row.parquet" for c in sorted(cells)]


def budget_args():
    """The sensitivity checkpoint's budget: with module sizes (probe_bits > 0), an average of bits per weight
    halfway between the lowest scanned width and high_bits (6 for 4-bit modules in an 8-bit model), solved as an
    integer program; without them, half the blocks/modules by count."""
    high = STUDY.tree.quant.high_bits
    low = [b for b in STUDY.bits if b < high]
    if STUDY.tree.eval.probe_bits and low:
        return f"--budget-bits {(min(low) + high) / 2:g}"
    return "--budget 0.5"


def base_input(wildcards):
    """A base the workflow pretrains itself is an input of its cells; a hub or path model is not."""
    model = wildcards.cell.split("/", 1)[0]
    if STUDY.model(model)["source"] in modellib.PREPARED:  # pretrained or converted by `qlbench prepare`
        return [str(modellib.base_dir(RESOURCES, model))]
    return []


def final_targets():
    base = f"{RESULTS}/{STUDY.name}"
    # a cell without a row is a target too: a missing input of a finished aggregate is no reason to run its job
    # (Snakemake asks only for missing targets). Finished cells reach the DAG as the aggregate's inputs, where a
    # changed setting (params) or a newer base still reruns them: one stat each here, not 10,000 more targets.
    targets = unfinished_rows()
    targets += [f"{base}/summary.md", f"{base}/summary.csv", f"{base}/figures/eval_loss_vs_bits.png"]
    if 16 in STUDY.bits and min(STUDY.bits) < 16:  # quantized cells and their 16-bit references
        targets += [f"{base}/similarity.parquet", f"{base}/rstar.parquet", f"{base}/figures/qlora.png"]
    if analysis_applies("bounds"):
        targets += [f"{base}/bounds/bounds.png", f"{base}/bounds/plan.html"]
    if analysis_applies("sensitivity"):
        targets += [f"{base}/sensitivity/sensitivity.png", f"{base}/sensitivity/validation.parquet"]
    return targets


def unfinished_rows():
    """The rows of cells without one, and of cells whose row cannot be read (truncated, not a row): such a row
    would pass for a finished cell, so it is renamed to row.parquet.corrupt and its cell is missing and rerun.
    One stat per cell, and one read of whatever rows changed since the last look (the cache `qlbench status` and
    the aggregate share)."""
    from qlbench.study import finished

    rows = cell_rows(None)
    files = finished.cell_files(RESULTS, STUDY.name, CELLS, gridlib.ROW)  # absolute: the cache's keys
    stamps = [finished.stamp(f) for f in files]
    found = [i for i, s in enumerate(stamps) if s]
    corrupt = {}
    finished.stack(
        [files[i] for i in found],
        [stamps[i] for i in found],
        finished.cache_path(RESULTS, STUDY.name, "cells"),
        [],
        corrupt=corrupt,
        required=finished.row_required(),
        one_row=True,
    )
    for i in found:
        if files[i] in corrupt and finished.move_aside(files[i]):
            print(
                f"qlbench: {rows[i]}: {corrupt[files[i]]}; moved aside to row.parquet.corrupt: its cell reruns",
                file=sys.stderr,
            )
            stamps[i] = None
    return [rows[i] for i, s in enumerate(stamps) if s is None]


def analysis_applies(name):
    """Does this study's grid hold what an analysis needs? (bounds: ≥3 (rank, bits) points of mask `all` with a
    16-bit reference; sensitivity: single-block or single-module masks with a reference.)"""
    quantized = [b for b in STUDY.bits if b < 16]
    masks = {m for ms in STUDY.masks.values() for m in ms}
    if name == "bounds":
        return 16 in STUDY.bits and "all" in masks and len(quantized) * len(STUDY.ranks) >= 3
    single = {m for m in masks if re.fullmatch(r"b\d+(\.[A-Za-z_.]+)?", m)}
    return bool(single) and ("none" in masks or 16 in STUDY.bits)
