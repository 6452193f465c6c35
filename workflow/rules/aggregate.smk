rule aggregate:
    input:
        cell_rows,
    output:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        curves=f"{RESULTS}/{{study}}/curves.parquet",
        probes=f"{RESULTS}/{{study}}/probes.parquet",
    log:
        f"{RESULTS}/{{study}}/logs/aggregate.log",
    conda:
        ENV
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.cells)),
    shell:
        f"qlbench aggregate {CONFIG_ARGS} {{wildcards.study:q}} --results {{params.results}} > {{log}} 2>&1"


rule summarize:
    input:
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        table=f"{RESULTS}/{{study}}/summary.md",
        csv=f"{RESULTS}/{{study}}/summary.csv",
        efficiency=f"{RESULTS}/{{study}}/efficiency.md",
        table_html=report(
            f"{RESULTS}/{{study}}/summary.html",
            caption="../report/summary.rst",
            category="Quality",
            subcategory="Tables",
        ),
        efficiency_html=report(
            f"{RESULTS}/{{study}}/efficiency.html",
            caption="../report/efficiency.rst",
            category="Efficiency",
            subcategory="Tables",
        ),
        figure=report(
            f"{RESULTS}/{{study}}/figures/eval_loss_vs_bits.png",
            caption="../report/eval_loss_vs_bits.rst",
            category="Quality",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/summarize.log",
    conda:
        ENV
    shell:
        "qlbench summarize {input} --table {output.table} --csv {output.csv} --figure {output.figure} "
        "--efficiency {output.efficiency} > {log} 2>&1"


rule similarity:
    input:
        # every row, through the aggregate (a cell's row is written last: where it is, its generations and adapter
        # are too); one input instead of one per cell keeps the DAG small
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        pairs=f"{RESULTS}/{{study}}/similarity.parquet",
        layers=f"{RESULTS}/{{study}}/similarity_layers.parquet",
        rstar=f"{RESULTS}/{{study}}/rstar.parquet",
    log:
        f"{RESULTS}/{{study}}/logs/similarity.log",
    conda:
        ENV
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.pairs)),
    shell:
        f"qlbench similarity {CONFIG_ARGS} {{wildcards.study:q}} --results {{params.results}} > {{log}} 2>&1"
