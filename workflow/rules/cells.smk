rule cell:
    input:
        base_input,
    output:
        # the one file that marks a finished cell: it is written last, after the curve, adapter, layers, generations
        # and probe beside it, so the DAG holds one file per cell (10,000 cells build in seconds)
        row=f"{RESULTS}/{{study}}/cells/{{cell}}/row.parquet",
    log:
        f"{RESULTS}/{{study}}/cells/{{cell}}/log.txt",
    conda:
        ENV
    threads: 1
    resources:
        **GPUS,
    params:
        # the hash of what determines the cell's numbers: with `rerun-triggers: params` (profiles), a changed
        # setting reruns exactly the cells it changes, and editing anything else in config.yaml reruns none
        identity=cell_hash,
        # the code's numerics version (qlbench/results.py): a bump reruns every cell made before it, as a setting does
        numerics=NUMERICS,
    shell:
        # the config files are not a param: passing another --configfile (planted trouble) must not rerun cells
        # --warm: forked from a process that has imported torch & co. already (one per machine or SLURM job)
        f"qlbench run --warm {CONFIG_ARGS} --study {{wildcards.study:q}} --cell {{wildcards.cell:q}} "
        f"--out {shlex.quote(RESULTS)}/{{wildcards.study:q}}/cells/{{wildcards.cell:q}} --threads {{threads}} "
        "2> /dev/null  # the cell writes {log} itself"
