rule cell:
    input:
        unpack(base_input),
    output:
        row=f"{RESULTS}/{{study}}/cells/{{cell}}/row.parquet",
        curve=f"{RESULTS}/{{study}}/cells/{{cell}}/curve.parquet",
        adapter=f"{RESULTS}/{{study}}/cells/{{cell}}/adapter.safetensors",
    log:
        f"{RESULTS}/{{study}}/cells/{{cell}}/log.txt",
    params:
        config=CONFIG_ARGS,
        coords=cell_args,
        out=lambda wildcards, output: os.path.dirname(output.row),
    threads: 1
    shell:
        "qlbench run {params.config} --study {wildcards.study} {params.coords} --out {params.out} "
        "--threads {threads} 2> /dev/null  # the cell writes {log} itself"
