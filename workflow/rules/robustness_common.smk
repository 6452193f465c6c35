# Input functions of robustness.smk (QaLoF's adversarial-robustness experiment), kept apart from its rules.
ROBUST_PRECISIONS = ("fp32", "fake8", "fake4", "bnb8", "bnb4", "random")


def robustness_cells():
    if STUDY.settings.get("task") != "classification" or not STUDY.settings.get("robustness"):
        return []
    return [c for c in CELLS if c.bits == 16]


def robustness_rows(wildcards):
    precisions = STUDY.settings["robustness"].get("precisions", ROBUST_PRECISIONS)
    root = f"{RESULTS}/{STUDY.name}/robustness"
    return [f"{root}/{c.path}/{p}.parquet" for c in robustness_cells() for p in precisions]


def robustness_targets():
    return [f"{RESULTS}/{STUDY.name}/robustness.md"] if robustness_cells() else []


def robust_args(wildcards):
    cell = gridlib.parse(wildcards.cell)
    return shlex.join(["--model", cell.model, "--rank", str(cell.rank), "--seed", str(cell.seed)])
