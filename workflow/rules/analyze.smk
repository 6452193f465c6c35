rule bounds:
    input:
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        fits=f"{RESULTS}/{{study}}/bounds/fits.parquet",
        verdicts=f"{RESULTS}/{{study}}/bounds/verdicts.parquet",
        bstar=f"{RESULTS}/{{study}}/bounds/bstar.parquet",
        noise=f"{RESULTS}/{{study}}/bounds/noise_check.parquet",
        figure=report(
            f"{RESULTS}/{{study}}/bounds/bounds.png",
            caption="../report/bounds.rst",
            category="Bounds",
        ),
        gaps=report(
            f"{RESULTS}/{{study}}/bounds/gaps.png",
            caption="../report/gaps.rst",
            category="Bounds",
        ),
        noise_figure=report(
            f"{RESULTS}/{{study}}/bounds/noise_check.png",
            caption="../report/noise_check.rst",
            category="Bounds",
        ),
        fits_table=report(
            f"{RESULTS}/{{study}}/bounds/fits.html",
            caption="../report/fits.rst",
            category="Bounds",
            subcategory="Tables",
        ),
        verdicts_table=report(
            f"{RESULTS}/{{study}}/bounds/verdicts.html",
            caption="../report/verdicts.rst",
            category="Bounds",
            subcategory="Tables",
        ),
        bstar_table=report(
            f"{RESULTS}/{{study}}/bounds/bstar.html",
            caption="../report/bstar.rst",
            category="Bounds",
            subcategory="Tables",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/bounds.log",
    conda:
        ENV
    params:
        out=lambda wildcards, output: os.path.dirname(output.fits),
    shell:
        "qlbench bounds {input} --out {params.out} > {log} 2>&1"


rule plan:
    input:
        f"{RESULTS}/{{study}}/cells.parquet",
    output:
        plan=f"{RESULTS}/{{study}}/bounds/plan.parquet",
        markdown=f"{RESULTS}/{{study}}/bounds/plan.md",
        table=report(
            f"{RESULTS}/{{study}}/bounds/plan.html",
            caption="../report/plan.rst",
            category="Bounds",
            subcategory="Tables",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/plan.log",
    conda:
        ENV
    params:
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input[0])),
        out=lambda wildcards, output: os.path.dirname(output.plan),
    shell:
        f"qlbench plan {CONFIG_ARGS} {{wildcards.study}} --results {{params.results}} --out {{params.out}} "
        "> {log} 2>&1"


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
        ranking_table=report(
            f"{RESULTS}/{{study}}/sensitivity/ranking.html",
            caption="../report/ranking.rst",
            category="Sensitivity",
            subcategory="Tables",
        ),
        recommendation_table=report(
            f"{RESULTS}/{{study}}/sensitivity/recommendation.html",
            caption="../report/recommendation.rst",
            category="Sensitivity",
            subcategory="Tables",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/sensitivity.log",
    conda:
        ENV
    params:
        out=lambda wildcards, output: os.path.dirname(output.ranking),
        budget=budget_args(),
    shell:
        "qlbench sensitivity {input.cells} --out {params.out} {params.budget} > {log} 2>&1"


rule validate_recommendation:
    input:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        recommendation=f"{RESULTS}/{{study}}/sensitivity/recommendation.parquet",
        rows=validation_rows,
    output:
        validation=f"{RESULTS}/{{study}}/sensitivity/validation.parquet",
        table=report(
            f"{RESULTS}/{{study}}/sensitivity/validation.html",
            caption="../report/validation.rst",
            category="Sensitivity",
            subcategory="Tables",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/validate_recommendation.log",
    conda:
        ENV
    shell:
        "qlbench validate-recommendation {input.cells} {input.recommendation} {input.rows} "
        "--out {output.validation} > {log} 2>&1"


rule qlora_figure:
    input:
        cells=f"{RESULTS}/{{study}}/cells.parquet",
        pairs=f"{RESULTS}/{{study}}/similarity.parquet",
        layers=f"{RESULTS}/{{study}}/similarity_layers.parquet",
        rstar=f"{RESULTS}/{{study}}/rstar.parquet",
    output:
        report(
            f"{RESULTS}/{{study}}/figures/qlora.png",
            caption="../report/qlora.rst",
            category="Similarity",
        ),
    log:
        f"{RESULTS}/{{study}}/logs/qlora_figure.log",
    conda:
        ENV
    params:
        study_dir=lambda wildcards, input: os.path.dirname(input.cells),
    shell:
        "qlbench qlora-figure {params.study_dir} --out {output} > {log} 2>&1"
