# Every analysis a file declares (qlbench/analysis/declared/, and the folders on QLBENCH_ANALYSES) is a rule made
# from its declaration (common.smk: analysis_inputs, analysis_outputs): what it needs in, what it writes out, its
# report items, and one command, `qlbench analyze NAME STUDY` (ANALYSIS_COMMAND). A checkpoint (sensitivity) stays
# a checkpoint.


for analysis in ANALYSES.values():
    if analysis.checkpoint:

        checkpoint:
            name:
                analysis.name
            input:
                **analysis_inputs(analysis),
            output:
                **analysis_outputs(analysis),
            log:
                f"{RESULTS}/{{study}}/logs/{analysis.name}.log",
            conda:
                ENV
            params:
                analysis=analysis.name,
            shell:
                ANALYSIS_COMMAND

    else:

        rule:
            name:
                analysis.name
            input:
                **analysis_inputs(analysis),
            output:
                **analysis_outputs(analysis),
            log:
                f"{RESULTS}/{{study}}/logs/{analysis.name}.log",
            conda:
                ENV
            params:
                analysis=analysis.name,
            shell:
                ANALYSIS_COMMAND
