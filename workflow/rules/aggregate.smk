rule aggregate:
    input:
        cell_rows,
    output:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        curves=f"{RESULTS}/{{study}}/curves.parquet",
    log:
        f"{RESULTS}/{{study}}/logs/aggregate.log",
    params:
        config=CONFIG_ARGS,
        results=RESULTS,
    shell:
        "qlbench aggregate {params.config} {wildcards.study} --results {params.results} > {log} 2>&1"


rule summarize:
    input:
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        table=f"{RESULTS}/{{study}}/summary.md",
        csv=f"{RESULTS}/{{study}}/summary.csv",
        figure=report(
            f"{RESULTS}/{{study}}/figures/eval_loss_vs_bits.png",
            caption="../report/eval_loss_vs_bits.rst",
            category="Quality",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/summarize.log",
    shell:
        "qlbench summarize {input} --table {output.table} --csv {output.csv} --figure {output.figure} > {log} 2>&1"
