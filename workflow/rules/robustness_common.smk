# Input functions of robustness.smk (QaLoF's adversarial-robustness experiment), kept apart from its rules.
from qlbench.study.settings import ROBUST_PRECISIONS


def robustness_cells():
    if STUDY.tree.data.task != "classification" or not STUDY.tree.data.robustness:
        return []
    return [c for c in CELLS if c.bits == 16]


def robustness_rows(wildcards):
    precisions = STUDY.tree.data.robustness.get("precisions", ROBUST_PRECISIONS)
    root = f"{RESULTS}/{STUDY.name}/robustness"
    return [f"{root}/{c.path}/{p}.parquet" for c in robustness_cells() for p in precisions]


def robustness_targets():
    return [f"{RESULTS}/{STUDY.name}/robustness.md"] if robustness_cells() else []


def robust_args(wildcards):
    cell = gridlib.parse(wildcards.cell)
    return shlex.join(["--model", cell.model, "--rank", str(cell.rank), "--seed", str(cell.seed)])
