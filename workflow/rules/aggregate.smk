rule aggregate:
    input:
        cell_rows,
    output:
        **{key: f"{RESULTS}/{{study}}/{name}" for key, name in registry.STUDY_FILES.items()},
    log:
        f"{RESULTS}/{{study}}/logs/aggregate.log",
    conda:
        ENV
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.cells)),
    shell:
        f"qlbench aggregate {CONFIG_ARGS} {{wildcards.study:q}} --results {{params.results}} > {{log}} 2>&1"
