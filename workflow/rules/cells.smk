rule cell:
    input:
        unpack(base_input),
    output:
        row=f"{RESULTS}/{{study}}/cells/{{cell}}/row.parquet",
        curve=f"{RESULTS}/{{study}}/cells/{{cell}}/curve.parquet",
        adapter=f"{RESULTS}/{{study}}/cells/{{cell}}/adapter.safetensors",
        layers=f"{RESULTS}/{{study}}/cells/{{cell}}/layers.parquet",
        generations=f"{RESULTS}/{{study}}/cells/{{cell}}/generations.parquet",
        probe=f"{RESULTS}/{{study}}/cells/{{cell}}/probe.parquet",
    log:
        f"{RESULTS}/{{study}}/cells/{{cell}}/log.txt",
    conda:
        ENV
    threads: 1
    resources:
        gpu=STUDY.settings["gpus"],  # a GPU from the cluster only when the study asks for one
    params:
        # the hash of what determines the cell's numbers: with `rerun-triggers: params` (profiles), a changed
        # setting reruns exactly the cells it changes, and editing anything else in config.yaml reruns none
        identity=cell_hash,
        coords=cell_args,
        out=lambda wildcards, output: os.path.dirname(output.row),
    shell:
        # the config files are not a param: passing another --configfile (planted trouble) must not rerun cells
        f"qlbench run {CONFIG_ARGS} --study {{wildcards.study}} {{params.coords}} --out {{params.out}} "
        f"--threads {{threads}} 2> /dev/null  # the cell writes {{log}} itself"
