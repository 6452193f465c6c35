"""What each quantization backend and each task can do, as its own file declares it — read without importing it.

A backend is one file in `qlbench/quant/` (or in a folder on `QLBENCH_BACKENDS`, for a backend of one's own) that
holds `BACKEND = Backend(...)` with literal arguments and `apply(model, plan, quant) -> list[dict]`; a task is one
file in `qlbench/tasks/` that holds `TASK = Task(...)`; an analysis is one file in `qlbench/analysis/declared/` (or
in a folder on `QLBENCH_ANALYSES`) that holds `ANALYSIS = Analysis(...)` and `run(job) -> str`. The declarations
are read from the files' source (the arguments are literals), so the config's checks, `qlbench settings`, the
aggregates and the workflow's DAG learn what every backend, task and analysis can do without importing torch — and this module, below `study/` (the floors of `tests/unit/test_structure.py`),
never imports the rooms it describes. A cell imports the one it runs (`backend_module`, `task_module`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BACKENDS_ENV = "QLBENCH_BACKENDS"  # folders (os.pathsep-separated) of backend files of one's own
ANALYSES_ENV = "QLBENCH_ANALYSES"  # folders (os.pathsep-separated) of analysis files of one's own


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    widths: dict[str, tuple[int, ...]]  # format -> the widths it can quantize (16 is always "left alone")
    requantizes: bool = False  # can re-quantize a module in place from kept full-precision weights (QaLoF's modes)
    linear_layout: bool = False  # replaces GPT-2's Conv1D (in, out) by an (out, in) Linear: LoRA's fan_in_fan_out off
    group_sizes: str = ""  # which block / group sizes it takes (for `qlbench settings`)
    row_scaled: tuple[int, ...] = ()  # widths whose weights keep one scale per row (LLM.int8): bytes depend on shape
    # how a quantized parameter's bytes are predicted (the efficiency table): "blockwise" — QLoRA's count, the code's
    # bits / 8 plus its share of fp32 block scales (as bitsandbytes stores NF4/FP4); "" — its own layout, measured only
    bytes_per_param: str = ""
    # width -> its quantizer's name in tables, where the format and the width do not say it (bnb's 8 bits: LLM.int8)
    names: dict[int, str] = field(default_factory=dict)
    # the same with `symmetric: false`, where that names another quantizer (GGUF's Q4_1 beside Q4_0)
    names_asymmetric: dict[int, str] = field(default_factory=dict)
    # format -> width -> why not: widths its library has that this backend cannot run here (as measured, e.g.
    # torchao's int4 on a CPU), so a table says so rather than leaving the row out
    unavailable: dict[str, dict[int, str]] = field(default_factory=dict)
    # serving-format presets a study's `deploy: NAME:PRESET` may name (qlbench.study.deploy): a backend with any is a
    # deploy format, and its file then has `deploy(model, choices, settings) -> list[dict]`
    deploys: tuple[str, ...] = ()
    source: str = ""  # the file that declares it (filled in by the registry)

    def can(self, fmt: str, bits: int) -> bool:
        return bits == 16 or bits in self.widths.get(fmt, ())


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    metrics: tuple[str, ...] = ()  # the row's task metrics beyond the loss
    source: str = ""


# What an analysis may need besides other analyses' outputs (`NAME.KEY`): the aggregate's files of a study folder,
STUDY_FILES = {"cells": "cells.parquet", "curves": "curves.parquet", "probes": "probes.parquet"}
# and inputs that are not one fixed file, made by whoever runs the analysis
COMPUTED = {
    "noise_check": "the noise check on qlbench's quantizers (the command computes it: analysis never quantizes)",
    "validation_rows": "the rows of the recommended masks' cells (known once the sensitivity checkpoint has run)",
}


@dataclass(frozen=True)
class Analysis:
    """An analysis of one study's results: what it reads, when a study gets it, what it writes (paths relative to
    results/STUDY) and how the Snakemake report shows it. The workflow's rule, `final_targets`, the report and
    `qlbench analyze NAME` are all made from this."""

    name: str
    summary: str
    needs: tuple[str, ...]  # STUDY_FILES keys, other analyses' outputs as `NAME.KEY`, or COMPUTED keys
    outputs: dict[str, str]  # key -> file, relative to results/STUDY
    applies: str = "always"  # a condition on the study's grid, named in qlbench/analysis/applies.py
    report: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # key -> (category, subcategory, caption)
    checkpoint: bool = False  # a Snakemake checkpoint: later inputs are known only once it has run
    source: str = ""

    def needed_files(self) -> dict[str, str]:
        """need -> its file relative to results/STUDY (the needs that are files)."""
        found = analyses()
        out = {}
        for need in self.needs:
            if need in STUDY_FILES:
                out[need] = STUDY_FILES[need]
            elif "." in need:
                name, key = need.split(".", 1)
                out[need] = found[name].outputs[key]
        return out


def analyses() -> dict[str, Analysis]:
    """name -> declaration of every analysis: qlbench's own, then those in the folders on QLBENCH_ANALYSES."""
    return _analyses(os.environ.get(ANALYSES_ENV, ""))


@functools.cache
def _analyses(extra: str) -> dict[str, Analysis]:
    folders = [PACKAGE / "analysis" / "declared"] + [Path(p) for p in extra.split(os.pathsep) if p]
    found = {}
    for d in (d for f in folders for d in _declared(f, "ANALYSIS", Analysis)):
        if d.name in found:
            raise ValueError(f"{d.source}: analysis {d.name!r} is already declared in {found[d.name].source}")
        found[d.name] = d
    for d in found.values():  # a need that names nothing is a typo: say so before any job
        for need in d.needs:
            name, _, key = need.partition(".")
            if not (need in STUDY_FILES or need in COMPUTED or key in getattr(found.get(name), "outputs", {})):
                raise ValueError(f"{d.source}: need {need!r} is none of {', '.join([*STUDY_FILES, *COMPUTED])} "
                                 "nor another analysis's output (NAME.KEY)")
        if set(d.report) - set(d.outputs):
            raise ValueError(f"{d.source}: report names outputs it lacks: {sorted(set(d.report) - set(d.outputs))}")
    return found


def analysis_module(name: str):
    """The analysis's file, imported (its `run`, polars and all)."""
    found = analyses()
    if name not in found:
        raise KeyError(f"unknown analysis {name!r}; analyses: {', '.join(found)}")
    return _module(Path(found[name].source), "analysis.declared", "analysis")


def backends() -> dict[str, Backend]:
    """name -> declaration of every backend: qlbench's own, then those in the folders on QLBENCH_BACKENDS."""
    return _backends(os.environ.get(BACKENDS_ENV, ""))


@functools.cache
def _backends(extra: str) -> dict[str, Backend]:
    folders = [PACKAGE / "quant"] + [Path(p) for p in extra.split(os.pathsep) if p]
    return {d.name: d for f in folders for d in _declared(f, "BACKEND", Backend)}


@functools.cache
def tasks() -> dict[str, Task]:
    return {d.name: d for d in _declared(PACKAGE / "tasks", "TASK", Task)}


def backend(name: str) -> Backend:
    found = backends()
    if name not in found:
        raise KeyError(f"unknown backend {name!r}; backends: {', '.join(found)}")
    return found[name]


def widths() -> tuple[int, ...]:
    """Every width some backend declares, in any format, ascending: what a cell's `bits` may be besides 16."""
    return tuple(sorted({b for d in backends().values() for ws in d.widths.values() for b in ws}))


def simulated_widths() -> tuple[int, ...]:
    """The widths of the backends that re-quantize in place (float weights, rounding simulated: `fake`): those a width
    may take after quantization (switchable, CPT, evaluation, random inference) and qlbench's own rounding of
    activations, keys and values, and adapters."""
    return tuple(sorted({b for d in backends().values() if d.requantizes for ws in d.widths.values() for b in ws}))


def span(ws) -> str:
    """`2-5`, or `2, 4, 6` where the widths leave gaps: widths as a message names them."""
    ws = sorted(ws)
    if len(ws) > 2 and ws == list(range(ws[0], ws[-1] + 1)):
        return f"{ws[0]}-{ws[-1]}"
    return ", ".join(map(str, ws))


def backend_module(name: str):
    """The backend's file, imported (its `apply`, torch and all)."""
    return _module(Path(backend(name).source), "quant", "backend")


def _module(source: Path, package: str, kind: str):
    """A declaring file, imported: qlbench's own as `qlbench.<package>.<name>`, one from an extra folder by its path
    (once; as `qlbench_<kind>_<name>`)."""
    if source.parent == PACKAGE.joinpath(*package.split(".")):
        return importlib.import_module(f"qlbench.{package}.{source.stem}")
    module_name = f"qlbench_{kind}_{source.stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, source)
        sys.modules[module_name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def task_module(name: str):
    if name not in tasks():
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(tasks())}")
    return importlib.import_module(f"qlbench.tasks.{name}")


def _declared(folder: Path, variable: str, kind: type) -> list:
    """The `variable = kind(...)` declarations at the top level of the .py files in `folder`, in file-name order."""
    out = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [variable]
                    and isinstance(node.value, ast.Call)):
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
                if kwargs.get("name") != path.stem:
                    raise ValueError(f"{path}: {variable} must be named {path.stem!r} (the file's name)")
                out.append(kind(**kwargs, source=str(path)))
    return out
