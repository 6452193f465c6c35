# The grid comes from qlbench (one source of truth for Snakemake, `qlbench sweep` and the tests).
# The config is validated here, before any job is submitted; a problem is one line naming it.
import os
import shlex
import sys
import time

from qlbench.study import grid as gridlib
from qlbench.data import models as modellib
from qlbench.study import config as studylib
from qlbench.study.identities import cell_identities
from qlbench.errors import QlbenchError
from qlbench.cluster import lock as lockmod
from qlbench import registry
from qlbench.analysis import applies
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
if STUDY.tree.data.task == "sft" and not workflow.remote_exec:  # every record tokenized once, before any job
    try:
        registry.task_module("sft").check(STUDY)
    except QlbenchError as e:
        sys.exit(f"qlbench: studies.{STUDY.name}: {e}")
try:
    ANALYSES = registry.analyses()  # read from their files' source: no polars, no import of the analyses
    for _analysis in ANALYSES.values():
        applies.applies(_analysis.applies, STUDY)  # an unknown condition is one line here, not a traceback later
except ValueError as e:
    sys.exit(f"qlbench: {e}")
CELLS = gridlib.cells(STUDY)
# every cell's identity hashed once here (a dict lookup per job, not a hash: 10,000 cells build in seconds)
IDENTITY = {c.path: h for c, (_, h) in zip(CELLS, cell_identities(STUDY, CELLS))}
# A GPU from the cluster only when the study asks for one (`gpus:`), as GRES: a string resource, which a pack (group
# job) asks for once however many of its cells run at once, so they share the job's GPUs (cells per GPU); an
# integer `gpu` would be summed over them
GPUS = {"gres": f"gpu:{STUDY.tree.runtime.gpus}"} if STUDY.tree.runtime.gpus else {}
# every qlbench command reads the same config files Snakemake read, in the order it merged them: the Snakefile's
# config.yaml, then --configfile's (workflow.configfiles lists those first)
ENV = "../envs/qlbench.yaml"
CONFIG_ARGS = " ".join(
    f"--config {shlex.quote(str(f))}"
    for f in sorted(workflow.configfiles, key=lambda f: f in workflow.overwrite_configfiles)
)
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
    from qlbench.analysis.declared.validate_recommendation import validation_cells

    recommended = pl.read_parquet(checkpoints.sensitivity.get(study=wildcards.study).output.recommendation)
    return [f"{cell_dir(c)}/row.parquet" for c in validation_cells(STUDY, recommended)]


# the input functions of an analysis's computed needs (registry.COMPUTED) that are files the DAG must make first
COMPUTED_INPUTS = {"validation_rows": validation_rows}


def analysis_inputs(analysis):
    """An analysis's needs as the named inputs of its rule (a name without the dot of `NAME.KEY`)."""
    inputs = {need: f"{RESULTS}/{{study}}/{rel}" for need, rel in analysis.needed_files().items()}
    inputs |= {need: COMPUTED_INPUTS[need] for need in analysis.needs if need in COMPUTED_INPUTS}
    return {need.replace(".", "_"): value for need, value in inputs.items()}


def analysis_outputs(analysis):
    """An analysis's outputs, the report's items among them with their category and caption."""
    outputs = {}
    for key, rel in analysis.outputs.items():
        path = f"{RESULTS}/{{study}}/{rel}"
        if key in analysis.report:
            category, subcategory, caption = analysis.report[key]
            path = report(
                path,
                caption=caption_file(f"{analysis.name}.{key}", caption),
                category=category,
                subcategory=subcategory or None,
            )
        outputs[key] = path
    return outputs


def caption_file(name, text):
    """A caption from a declaration as the .rst file Snakemake's report reads (written when its text changes)."""
    path = os.path.abspath(f".snakemake/qlbench/captions/{name}.rst")
    if not os.path.exists(path) or open(path).read() != text:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return path


# one command for every analysis; its name comes as a param: Snakemake evaluates a shell directive again when the job
# runs, when the loop's variable in analyze.smk holds the last analysis
ANALYSIS_COMMAND = (
    f"qlbench analyze {{params.analysis}} {CONFIG_ARGS} {{wildcards.study:q}} --results {shlex.quote(RESULTS)} "
    "> {log} 2>&1"
)


def base_input(wildcards):
    """A base the workflow pretrains itself is an input of its cells; a hub or path model is not."""
    model = wildcards.cell.split("/", 1)[0]
    if STUDY.model(model)["source"] in modellib.PREPARED:  # pretrained or converted by `qlbench prepare`
        return [str(modellib.base_dir(RESOURCES, model))]
    return []


def final_targets():
    # a cell without a row is a target too: a missing input of a finished aggregate is no reason to run its job
    # (Snakemake asks only for missing targets). Finished cells reach the DAG as the aggregate's inputs, where a
    # changed setting (params) or a newer base still reruns them: one stat each here, not 10,000 more targets.
    targets = unfinished_rows()
    for analysis in ANALYSES.values():  # every output of each analysis the study's grid has what it needs for
        if applies.applies(analysis.applies, STUDY):
            targets += [f"{RESULTS}/{STUDY.name}/{rel}" for rel in analysis.outputs.values()]
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
