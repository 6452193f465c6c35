# qlbench: a grid of LoRA fine-tuning cells over model x bits x rank x layer-mask x seed, and what they show.
# Dry run: snakemake -n    Local: snakemake --profile profiles/local    Cluster: snakemake --profile profiles/slurm
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/robustness.smk"


rule all:
    default_target: True
    input:
        final_targets() + robustness_targets(),
