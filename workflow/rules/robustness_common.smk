# Input functions of robustness.smk (QaLoF's adversarial-robustness experiment), kept apart from its rules.
from qlbench.study.settings import ROBUST_PRECISIONS


def robustness_cells():
    if STUDY.tree.data.task != "classification" or STUDY.tree.data.robustness is None:
        return []
    return [c for c in CELLS if c.bits == 16]


def robustness_rows(wildcards):
    """Every precision on the texts made against FP32 (transfer), and each other attacked precision on its own."""
    opts = STUDY.tree.data.robustness  # typed, its defaults filled in (qlbench.study.settings.Robustness)
    attacked = opts.attacked
    pairs = [("fp32", p) for p in opts.precisions if "fp32" in attacked]
    pairs += [(a, a) for a in attacked if a != "fp32"]
    root = f"{RESULTS}/{STUDY.name}/robustness"
    return [f"{root}/{c.path}/against-{a}/{p}.parquet" for c in robustness_cells() for a, p in pairs]


def robustness_targets():
    """The table, and each evaluation without its file: as with cells (final_targets), a missing input of a table
    that exists is no reason for Snakemake to run anything, so a lost evaluation must be a target itself."""
    if not robustness_cells():
        return []
    return [f"{RESULTS}/{STUDY.name}/robustness.md"] + [p for p in robustness_rows(None) if not os.path.exists(p)]


def robust_args(wildcards):
    cell = gridlib.parse(wildcards.cell)
    return shlex.join(["--model", cell.model, "--rank", str(cell.rank), "--seed", str(cell.seed)])
