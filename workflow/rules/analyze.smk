rule bounds:
    input:
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        fits=f"{RESULTS}/{{study}}/bounds/fits.parquet",
        bstar=f"{RESULTS}/{{study}}/bounds/bstar.parquet",
        figure=report(
            f"{RESULTS}/{{study}}/bounds/bounds.png",
            caption="../report/bounds.rst",
            category="Bounds",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/bounds.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output.fits),
    conda:
        ENV
    shell:
        "qlbench bounds {input} --out {params.out} > {log} 2>&1"


checkpoint sensitivity:
    input:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        probes=f"{RESULTS}/{{study}}/probes.parquet",
    output:
        ranking=f"{RESULTS}/{{study}}/sensitivity/ranking.parquet",
        recommendation=f"{RESULTS}/{{study}}/sensitivity/recommendation.parquet",
        figure=report(
            f"{RESULTS}/{{study}}/sensitivity/sensitivity.png",
            caption="../report/sensitivity.rst",
            category="Sensitivity",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/sensitivity.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output.ranking),
    conda:
        ENV
    shell:
        "qlbench sensitivity {input.cells} --out {params.out} > {log} 2>&1"


rule validate_recommendation:
    input:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        recommendation=f"{RESULTS}/{{study}}/sensitivity/recommendation.parquet",
        rows=validation_rows,
    output:
        f"{RESULTS}/{{study}}/sensitivity/validation.parquet",
    log:
        f"{RESULTS}/{{study}}/logs/validate_recommendation.log",
    conda:
        ENV
    shell:
        "qlbench validate-recommendation {input.cells} {input.recommendation} {input.rows} --out {output} "
        "> {log} 2>&1"
