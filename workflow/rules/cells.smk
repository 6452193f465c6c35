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
    params:
        config=CONFIG_ARGS,
        coords=cell_args,
        out=lambda wildcards, output: os.path.dirname(output.row),
    resources:
        gpu=STUDY.settings["gpus"],  # a GPU from the cluster only when the study asks for one
    threads: 1
    conda:
        ENV
    shell:
        "qlbench run {params.config} --study {wildcards.study} {params.coords} --out {params.out} "
        "--threads {threads} 2> /dev/null  # the cell writes {log} itself"
