rule prepare_base:
    output:
        directory(f"{RESOURCES}/models/{{model}}"),
    log:
        f"{RESOURCES}/logs/prepare_{{model}}.log",
    conda:
        ENV
    threads: 2
    params:
        spec=base_hash,  # a changed model entry (shape, pretraining) prepares the base again
    shell:
        f"qlbench prepare {CONFIG_ARGS} {{wildcards.model:q}} --out {{output}} --threads {{threads}} > {{log}} 2>&1"
