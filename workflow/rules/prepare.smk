rule prepare_base:
    output:
        directory(f"{RESOURCES}/models/{{model}}"),
    log:
        f"{RESOURCES}/logs/prepare_{{model}}.log",
    params:
        config=CONFIG_ARGS,
    threads: 2
    conda:
        ENV
    shell:
        "qlbench prepare {params.config} {wildcards.model} --out {output} --threads {threads} > {log} 2>&1"
