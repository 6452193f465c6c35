# QaLoF's adversarial-robustness experiment (a study with `task: classification` and `robustness:`): GBDA runs per
# finished 16-bit cell (model, rank, seed) against the classifier at each `attacked` precision, white-box; the texts
# made against FP32 are evaluated at every precision (transfer), the others at the precision they were made against.


include: "robustness_common.smk"


wildcard_constraints:
    precision="|".join(ROBUST_PRECISIONS),
    attacked="|".join(ROBUST_PRECISIONS),


rule attack:
    input:
        # a cell's row is written last, after its adapter.safetensors (LoRA and the trained head)
        row=f"{RESULTS}/{{study}}/cells/{{cell}}/row.parquet",
    output:
        f"{RESULTS}/{{study}}/robustness/{{cell}}/against-{{attacked}}/adversarial.parquet",
    log:
        f"{RESULTS}/{{study}}/robustness/{{cell}}/against-{{attacked}}/attack.log",
    conda:
        ENV
    threads: 1
    resources:
        **GPUS,
    params:
        coords=robust_args,
        cell_dir=lambda wildcards, input: os.path.dirname(input.row),
    shell:
        f"qlbench attack {CONFIG_ARGS} --study {{wildcards.study:q}} {{params.coords}} --cell-dir {{params.cell_dir}} "
        f"--attacked {{wildcards.attacked}} --threads {{threads}} --out {{output}} > {{log}} 2>&1"


rule robust_eval:
    input:
        adversarial=f"{RESULTS}/{{study}}/robustness/{{cell}}/against-{{attacked}}/adversarial.parquet",
        row=f"{RESULTS}/{{study}}/cells/{{cell}}/row.parquet",
    output:
        f"{RESULTS}/{{study}}/robustness/{{cell}}/against-{{attacked}}/{{precision}}.parquet",
    log:
        f"{RESULTS}/{{study}}/robustness/{{cell}}/against-{{attacked}}/{{precision}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **GPUS,
    params:
        coords=robust_args,
        cell_dir=lambda wildcards, input: os.path.dirname(input.row),
    shell:
        f"qlbench robust-eval {CONFIG_ARGS} --study {{wildcards.study:q}} {{params.coords}} --cell-dir {{params.cell_dir}} "
        f"--precision {{wildcards.precision}} --adversarial {{input.adversarial}} --threads {{threads}} "
        f"--out {{output}} > {{log}} 2>&1"


rule robustness:
    input:
        robustness_rows,
    output:
        table=report(f"{RESULTS}/{{study}}/robustness.md", category="robustness"),
        parquet=f"{RESULTS}/{{study}}/robustness.parquet",
    log:
        f"{RESULTS}/{{study}}/logs/robustness.log",
    conda:
        ENV
    params:
        folder=lambda wildcards: f"{RESULTS}/{wildcards.study}/robustness",
        out=lambda wildcards: f"{RESULTS}/{wildcards.study}",
    shell:
        "qlbench robustness {params.folder} --out {params.out} > {log} 2>&1"
