"""Commands that read a study's results (parquet) and write tables and figures: no model, no torch.

`qlbench analyze NAME STUDY` runs any analysis a file declares (qlbench/analysis/declared/, QLBENCH_ANALYSES), as the
workflow's rule does; `bounds`, `sensitivity` and `plan` are the same analyses with their options, on files by hand.
"""

from __future__ import annotations

from pathlib import Path

import click

from qlbench import registry
from qlbench.cli.group import config_option, load_study, main
from qlbench.errors import QlbenchError


def _analyze_help() -> str:
    listed = "\n".join(f"  {a.name}: {a.summary}" for a in registry.analyses().values())
    return ("Run the analysis NAME on STUDY's results (results/STUDY), as the workflow's rule does: it reads what "
            f"the analysis declares it needs and writes its declared outputs.\n\n\b\nAnalyses (the folders on "
            f"{registry.ANALYSES_ENV} add their own):\n" + listed)


@main.command(help=_analyze_help())
@config_option
@click.argument("name", type=click.Choice(list(registry.analyses())), metavar="NAME")
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE",
              help="an option of the analysis (e.g. tolerance=0.02 for bounds, budget_bits=6 for sensitivity)")
def analyze(config_files, name, study, results, options):
    from qlbench.analysis import job as joblib
    from qlbench.study import config as studylib

    st = load_study(config_files, study or studylib.read_config(config_files).get("study") or "demo")
    folder = Path(results or st.results) / st.name
    declaration = registry.analyses()[name]
    if "cells" in declaration.needs and not (folder / "cells.parquet").exists():
        raise QlbenchError(f"{name}: {folder / 'cells.parquet'} does not exist: run the study first")
    computed = {"noise_check": _noise_check(folder / "cells.parquet")} if "noise_check" in declaration.needs else {}
    pairs = [o.partition("=") for o in options]
    if any(not sep for _, sep, _ in pairs):
        raise QlbenchError(f"--set {options}: use KEY=VALUE")
    job = joblib.make(declaration, st, folder, computed, {k: v for k, _, v in pairs})
    for path in job.outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = registry.analysis_module(name).run(job)
    except ValueError as e:
        raise QlbenchError(f"{name}: {e}") from None
    if text:
        click.echo(text)


@main.command()
@click.argument("cells_parquet", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for tables and figures")
@click.option("--tolerance", default=0.01, show_default=True, help="eval-loss gap (nats) b* must stay within")
@click.option("--noise-check/--no-noise-check", default=True, show_default=True,
              help="quantize the 16-bit cells' trained adapters with qlbench's quantizers and compare the error "
                   "variance with Δ²/12 (a Gaussian tensor when no adapter is found)")
def bounds(cells_parquet, out, tolerance, noise_check):
    """Fit L(r, b, N) = L* + c1·sqrt(r/N) + c2·r·2^(-2b) and its rivals to every cell's eval loss (16-bit
    included), with CIs, R², LOO error and AICc; the supported form, b*(r, N), a verdict per claim of the bounds
    paper, gradient-variance slopes, and the noise check on the real quantizers."""
    from qlbench.analysis.declared.bounds import run_bounds

    noise = _noise_check(Path(cells_parquet)) if noise_check else None
    try:
        click.echo(run_bounds(Path(cells_parquet), Path(out), tolerance, noise))
    except ValueError as e:
        raise QlbenchError(f"bounds: {e}") from None


def _noise_check(cells_parquet: Path):
    """Here, not in analysis/: the check quantizes tensors, and analysis never touches a quantizer."""
    import polars as pl

    from qlbench.quant import noise

    widths = set(pl.read_parquet(cells_parquet, columns=["bits"])["bits"].to_list()) - {16} | {2, 3, 4, 8}
    tensors = noise.adapter_tensors(cells_parquet.parent / "cells")
    source = "adapters of the 16-bit cells"
    if not tensors:
        tensors, source = noise.gaussian_tensors(), "a Gaussian tensor (no adapter found)"
    return pl.DataFrame(noise.check(tensors, sorted(widths))).with_columns(pl.lit(source).alias("source"))


@main.command()
@click.argument("cells_parquet", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for tables and sensitivity.png")
@click.option("--budget", default=0.5, show_default=True,
              help="shorthand: this fraction of the blocks/modules (by count) to low bits")
@click.option("--budget-bits", type=float, default=None,
              help="average bits per quantized weight (parameter-weighted): a width per block/module by an exact "
                   "integer program (CBC), instead of --budget")
def sensitivity(cells_parquet, out, budget, budget_bits):
    """Rank blocks and modules by the eval loss they cost at low bits; recommend a mixed-precision configuration."""
    from qlbench.analysis.declared.sensitivity import run_sensitivity

    try:
        click.echo(run_sensitivity(Path(cells_parquet), Path(out), budget, budget_bits))
    except ValueError as e:
        raise QlbenchError(f"sensitivity: {e}") from None


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
def findings(config_files, study, results):
    """Print, as Markdown, every number the README states about STUDY, from its results (tables, gaps,
    similarity, bound fit and verdicts, sensitivity ranking, validated recommendation)."""
    from qlbench.analysis.findings import findings as study_findings
    from qlbench.study import config as studylib

    name = study or studylib.read_config(config_files).get("study") or "demo"
    root = Path(results or studylib.results_root(studylib.read_config(config_files)))
    try:
        click.echo(study_findings(root / name))
    except FileNotFoundError as e:
        raise QlbenchError(f"findings: {e}") from None


@main.command("qalof-table")
@click.argument("cells_parquets", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for qalof_table.* and qalof_scan.*")
@click.option("--metric", type=click.Choice(["f1", "em"]), default="f1", show_default=True,
              help="the metric the layer-wise scans rank by")
def qalof_table(cells_parquets, out, metric):
    """QaLoF's table from one or more studies' CELLS_PARQUETS (e.g. results/qalof-qa-cpu*/cells.parquet): EM/F1
    per configuration (FP, static PTQ, LoRA, switchable, CPT, hybrid, random precision), the layer-wise scan of
    a switchable model beside the scan retrained per mask (ranks, Spearman agreement, cost), and the gaps the
    table turns on, paired by seed with 95% intervals and what they establish (qalof_gaps.*)."""
    import polars as pl

    from qlbench.analysis import qalof, qalof_gaps
    from qlbench.analysis.tables import markdown
    from qlbench.results import write_parquet

    cells = pl.concat([pl.read_parquet(p) for p in cells_parquets], how="diagonal_relaxed")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = qalof.table(cells)
    if table.is_empty():
        raise QlbenchError("qalof-table: no cell reports EM/F1 (an extractive_qa study's cells.parquet)")
    write_parquet(table, folder / "qalof_table.parquet")
    text = markdown(table.select("model", "rank", "configuration", "schedule", "seeds", "em", "em_ci95", "f1",
                                 "f1_ci95"),
                    "QaLoF's table: EM / F1 (%) per configuration, mean and 95% CI over seeds")
    scan = qalof.scan(cells, metric)
    if not scan.is_empty():
        write_parquet(scan, folder / "qalof_scan.parquet")
        first = scan.row(0, named=True)
        text += "\n" + markdown(
            scan.select("model", "rank", "mask", "scan_drop", "rank_scan", "retrain_drop", "rank_retrain"),
            f"Layer-wise scan ({metric} drop at the low width): one switchable model vs a cell per mask")
        rho = "–" if first["spearman"] is None else f"{first['spearman']:.2f}"
        text += (f"\nSpearman agreement {rho}; cost: scan {first['scan_s'] or 0:.0f} s of evaluation, "
                 f"retraining {first['retrain_s'] or 0:.0f} s of cells\n")
    found = pl.concat([qalof_gaps.gaps(cells), qalof_gaps.agreement(cells, metric)], how="diagonal_relaxed")
    if not found.is_empty():
        write_parquet(found, folder / "qalof_gaps.parquet")
        text += "\n" + markdown(
            found.select("model", "rank", "schedule", "gap", "metric", "seeds", "mean", "low", "high", "verdict"),
            "What the seeds carry: each gap paired by seed (B - A; Spearman for the scans), 95% t interval")
    (folder / "qalof_table.md").write_text(text)
    click.echo(text)


@main.command("compare")
@config_option
@click.argument("cells_parquets", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--by", "by", multiple=True, required=True,
              help="a column or setting to group by (repeat: --by completion_only_loss --by bits)")
@click.option("--metric", "metrics", multiple=True, required=True, help="a column to compare (repeat)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for compare.parquet and .md")
def compare(config_files, cells_parquets, by, metrics, out):
    """Cells of one or more studies' CELLS_PARQUETS side by side: one row per value of the --by keys (columns, or
    settings, an unset one at its default), each --metric's mean over seeds ± its 95% t interval."""
    import polars as pl

    from qlbench.analysis import compare as cmp
    from qlbench.results import write_parquet
    from qlbench.study import settings as settings_tree

    cells = pl.concat([pl.read_parquet(p) for p in cells_parquets], how="diagonal_relaxed")
    defaults = {k: s.default for k, s in settings_tree.SPECS.items()}
    try:
        table = cmp.table(cells, list(by), list(metrics), defaults)
    except KeyError as e:
        raise QlbenchError(f"compare: {e.args[0]}") from None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table, folder / "compare.parquet")
    text = cmp.markdown(table, list(by), list(metrics))
    (folder / "compare.md").write_text(text)
    click.echo(text)


@main.command("backends-table")
@config_option
@click.argument("cells_parquets", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for backends_table.parquet and backends_table.md")
def backends_table(config_files, cells_parquets, out):
    """One row per backend x format x width of one or more studies' CELLS_PARQUETS (e.g.
    results/backends-smollm2-*/cells.parquet): eval loss before LoRA, after it, merged into the 16-bit base and
    merged then quantized again; the 16-bit reference first, named for what its weights were; and, without numbers,
    each width a backend present cannot run here (its declaration's `unavailable`) with the reason. Then each
    quantized row's cost over the reference, paired by seed, with its 95% interval."""
    import polars as pl

    from qlbench import registry
    from qlbench.analysis import backends
    from qlbench.results import write_parquet
    from qlbench.study import config as studylib

    cells = pl.concat([pl.read_parquet(p) for p in cells_parquets], how="diagonal_relaxed")
    if cells.is_empty():
        raise QlbenchError("backends-table: no cells in " + ", ".join(cells_parquets))
    models = studylib.read_config(config_files).get("models", {})
    sources = {name: spec.get("source", "") for name, spec in models.items()}
    unavailable = {name: b.unavailable for name, b in registry.backends().items() if b.unavailable}
    table = backends.table(cells, unavailable, sources)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table, folder / "backends_table.parquet")
    text = ("## Eval loss per backend and width: before LoRA, after it, merged at 16 bits, merged and requantized\n\n"
            + backends.markdown(table)
            + "\n## Cost over the 16-bit reference, paired by seed (nats; after LoRA and later against the reference "
              "after LoRA)\n\n" + backends.cost_markdown(table))
    (folder / "backends_table.md").write_text(text)
    click.echo(text)


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--level", default=0.8, show_default=True, help="the power a claim's test must reach")
@click.option("--replicates", default=100, show_default=True, help="simulated data sets per claim and grid")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="also write plan.md, plan.html and plan.parquet into this folder")
def plan(config_files, study, results, level, replicates, out):
    """Which cells would decide each verdict STUDY's grid cannot (runs no cell), one table per kind: the bounds
    claims, the sensitivity ranks and top-k set, the recommendation's predicted degradation, paired gaps (QaLoF's,
    robustness's) and backend comparisons. Per verdict its power now and the cheapest addition (widths, ranks, N,
    seeds) that brings it above --level (power now: the verdicts' own simulation; after: with the fitted values'
    own uncertainty drawn in) from cells.parquet when it exists (a stated nominal law before), with the cells it adds and
    their estimated cell-hours (from the measured wall time per cell). --out writes plan.parquet: one row per
    verdict, the columns of qlbench.analysis.plan.VERDICT_COLUMNS (what `qlbench adapt` reads)."""
    from qlbench.analysis.declared.plan import ANALYSIS, run_plan
    from qlbench.study import config as studylib

    name = study or studylib.read_config(config_files).get("study") or "demo"
    st = load_study(config_files, name)
    root = Path(results or st.config.get("results", "results"))
    outputs = {key: Path(out) / Path(rel).name for key, rel in ANALYSIS.outputs.items()} if out else None
    try:
        click.echo(run_plan(st, root, level, replicates, outputs))
    except ValueError as e:
        raise QlbenchError(f"plan: {e}") from None
