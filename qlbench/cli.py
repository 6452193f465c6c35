"""The `qlbench` command. Thin: parse, call, exit with one clear line. Heavy imports happen inside commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qlbench.errors import QlbenchError

CONFIG_HELP = "config file(s); later ones override earlier ones"


def _config_option(f):
    return click.option("--config", "-c", "config_files", multiple=True, default=["config.yaml"],
                        show_default=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)(f)


def _load(config_files, study_name):
    from qlbench.study import config as study

    return study.load(study.read_config(config_files), study_name)


class _Group(click.Group):
    """Turns a QlbenchError anywhere into one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QlbenchError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(package_name="qlbench")
def main():
    """qlbench: does quantizing the model during LoRA fine-tuning cost quality, where, and how many bits are enough?

    A study (config.yaml) is a grid of cells over model x bits x rank x layer-mask x seed. Snakemake runs the grid
    (`snakemake --profile profiles/local`); these commands run one cell, prepare a base, and aggregate results.
    """


@main.command()
@_config_option
@click.option("--study", default=None, help="study name in the config (default: the config's `study`)")
@click.option("--model", required=True, help="model name in the config")
@click.option("--bits", required=True, type=int, help="bit width of the masked layers: 2-8, or 16 for none")
@click.option("--rank", required=True, type=int, help="LoRA rank")
@click.option("--mask", default="all", show_default=True, help="which layers get --bits (see `qlbench masks`)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--n-train", type=int, default=None, help="use the first N training examples")
@click.option("--targets", type=click.Choice(["qv", "kv", "attn", "attn_mlp"]), default=None,
              help="LoRA target preset of this cell (a study's `targets: {each: [...]}` axis)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the cell's folder")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a fixed setting of the study")
@click.option("--threads", default=1, show_default=True, type=int, help="torch CPU threads")
def run(config_files, study, model, bits, rank, mask, seed, n_train, targets, out, overrides, threads):
    """Run one cell: quantize, attach LoRA, train, evaluate, write row/curve/adapter/log into OUT."""
    from qlbench.study import config as studylib
    from qlbench.cell.run import run as run_cell
    from qlbench.study.grid import Cell
    from qlbench.cluster.status import Heartbeat

    st = _load(config_files, study)
    settings = studylib.cell_settings(st, dict(studylib.parse_override(o) for o in overrides), bits)
    cell = Cell(model, bits, rank, mask, seed, n_train, targets)
    out_dir = Path(out)
    try:
        with Heartbeat(out_dir):  # how `qlbench status` tells a running cell from a killed one
            row = run_cell(st, cell, out_dir, settings, threads)
    except QlbenchError:
        raise
    except BaseException as e:  # a cell that cannot run: one line here, the traceback in its log
        _fail(out_dir, e)
    click.echo(f"{cell.path}: {row['status']} eval_loss={row['eval_loss']:.4f} "
               f"(before training {row['eval_loss_before']:.4f})")


def _fail(out_dir: Path, e: BaseException):
    import traceback

    from qlbench.study.grid import LOG

    reason = _reason(e)
    if out_dir.exists():
        with open(out_dir / LOG, "a") as log:
            traceback.print_exception(e, file=log)
            log.write(f"error: {reason}\n")
    click.echo(f"qlbench run: {reason}", err=True)
    sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def _reason(e: BaseException) -> str:
    name = type(e).__name__
    if name == "OutOfMemoryError" or isinstance(e, MemoryError):
        return f"out of memory ({name})"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{name}: {first}" if first else name


@main.command()
@_config_option
@click.argument("model")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="where to save it (default: resources/models/MODEL)")
@click.option("--threads", default=2, show_default=True, type=int)
def prepare(config_files, model, out, threads):
    """Prepare a base under resources/models/: pretrain it (source: pretrain) or convert SmolLM2's GGUF (source: smollm2)."""
    from qlbench.data import models
    from qlbench.study import config as study
    from qlbench.cell.pretrain import pretrain

    config = study.read_config(config_files)
    study.check_schema(config)
    target = Path(out) if out else models.base_dir(config.get("resources", "resources"), model)
    pretrain(config, model, target, threads=threads, log=click.echo)


@main.command()
@_config_option
@click.argument("model")
@click.option("--resolve", "mask", default=None, help="print the module names this mask selects")
def masks(config_files, model, mask):
    """List the module names of MODEL that masks select from (or resolve one mask)."""
    from qlbench.study import config as study, masks as masklang

    config = study.read_config(config_files)
    study.check_schema(config)
    if model not in config["models"]:
        raise QlbenchError(f"unknown model {model!r}; models: {', '.join(config['models'])}")
    spec = config["models"][model]
    lay = masklang.layout(spec["arch"], spec["n_layer"])
    if mask:
        click.echo("\n".join(masklang.resolve(mask, lay)))
        return
    click.echo(f"{model}: {spec['arch']}, blocks b0-{lay.n_layer - 1}")
    click.echo(f"groups:  {', '.join(masklang.GROUPS)}")
    click.echo(f"modules: {', '.join(lay.modules)}")
    click.echo(f"e.g.     all | none | attn | b0-{lay.n_layer - 1}.mlp | b0.{lay.modules[-1]}+b{lay.n_layer - 1}")


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--count", is_flag=True, help="print only the number of cells")
def grid(config_files, study, count):
    """Validate the config and list a study's cells (their folders under results/STUDY/cells/)."""
    from qlbench.study import grid as gridlib

    cells = gridlib.cells(_load(config_files, study))
    click.echo(str(len(cells)) if count else "\n".join(c.path for c in cells))


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--allow-missing", is_flag=True, help="aggregate whatever cells are complete")
def aggregate(config_files, study, results, allow_missing):
    """Gather a study's cells into results/STUDY/cells.parquet, curves.parquet and probes.parquet."""
    from qlbench.analysis.aggregate import aggregate as run_aggregate
    from qlbench.results import write_parquet

    st = _load(config_files, study)
    root = results or st.config.get("results", "results")
    tables, missing, stale = run_aggregate(st, root)
    if stale and not allow_missing:
        first, changes = next(iter(stale.items()))
        raise QlbenchError(f"{len(stale)} cells were made under other settings (first: {first}: {changes}); rerun "
                           "them, or use --allow-missing to leave them out")
    if missing and not allow_missing:
        raise QlbenchError(f"{len(missing)} cells have no row yet (first: {missing[0]}); use --allow-missing")
    if tables["cells"].is_empty():
        raise QlbenchError(f"no finished cells under {root}/{st.name}/cells")
    for name, table in tables.items():
        write_parquet(table, Path(root) / st.name / f"{name}.parquet")
    click.echo(f"{st.name}: {tables['cells'].height} cells, {tables['curves'].height} curve rows" +
               (f", {len(missing)} missing" if missing else "") +
               (f", {len(stale)} made under other settings left out" if stale else ""))


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
def similarity(config_files, study, results):
    """Quantized cells against their 16-bit references: token match, embedding cosine and per-layer ΔW similarity
    (results/STUDY/similarity.parquet, similarity_layers.parquet) and r*, the smallest rank at similarity >= 0.95
    (rstar.parquet). Reads stored outputs only."""
    from qlbench.analysis import similarity as sim
    from qlbench.results import write_parquet

    st = _load(config_files, study)
    root = Path(results or st.config.get("results", "results"))
    pairs, layers, skipped = sim.pairs(st, str(root))
    write_parquet(pairs, root / st.name / "similarity.parquet")
    write_parquet(layers, root / st.name / "similarity_layers.parquet")
    write_parquet(sim.r_star(pairs), root / st.name / "rstar.parquet")
    click.echo(f"{st.name}: {pairs.height} quantized/16-bit pairs, {layers.height} layer rows"
               + (f", {len(skipped)} skipped for missing outputs (first: {skipped[0]})" if skipped else ""))


@main.command()
@click.argument("cells_parquet", type=click.Path(exists=True, dir_okay=False))
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False), help="summary .md")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False), help="summary .csv")
@click.option("--figure", "figure_path", required=True, type=click.Path(dir_okay=False), help="eval loss vs bits .png")
@click.option("--efficiency", "efficiency_path", default=None, type=click.Path(dir_okay=False),
              help="efficiency table .md (memory, time, throughput per configuration)")
def summarize(cells_parquet, table_path, csv_path, figure_path, efficiency_path):
    """The summary table (Markdown, CSV) and the eval-loss-against-bits figure of an aggregated study."""
    from qlbench.analysis.commands import run_summary

    click.echo(run_summary(Path(cells_parquet), Path(table_path), Path(csv_path), Path(figure_path),
                           Path(efficiency_path) if efficiency_path else None))


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--profile", default="profiles/slurm", show_default=True,
              help="the Snakemake profile the resubmit command names")
@click.option("--all", "show_all", is_flag=True, help="list every cell, not only those that are not done")
def status(config_files, study, results, profile, show_all):
    """Cells done, diverged, failed (with the reason from each log), running and missing, and the command that
    resubmits the failed and missing ones. Reads files only: no scheduler, no model."""
    from qlbench.cluster import status as statuslib

    st = _load(config_files, study)
    root = results or st.config.get("results", "results")
    statuses = statuslib.study_status(st, root)
    commands = statuslib.resubmit_commands(st.name, list(config_files), results, profile)
    click.echo(statuslib.report(st, statuses, f"{root}/{st.name}/cells", commands, show_all))


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--executor", type=click.Choice(["slurm", "local"]), default="slurm", show_default=True,
              help="a SLURM job array, or processes on this machine")
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--partition", default=None, help="SLURM partition (default: the cluster's default)")
@click.option("--account", default=None, help="SLURM account (default: none given)")
@click.option("--mem-gb", default=4.0, show_default=True, type=float, help="memory per cell")
@click.option("--time-min", default=60, show_default=True, type=int, help="time limit per cell, in minutes")
@click.option("--parallel", default=None, type=int,
              help="cells at once (default: all for slurm, the CPU count for local)")
@click.option("--gpus", default=None, type=int, help="GPUs per cell (default: the study's `gpus`)")
@click.option("--retries", default=1, show_default=True, type=int,
              help="resubmit a failed cell this many times, each time with twice the memory and more time")
@click.option("--logs", default=None, help="submitit's folder (default: RESULTS/STUDY/logs/sweep)")
def sweep(config_files, study, executor, results, partition, account, mem_gb, time_min, parallel, gpus, retries,
          logs):
    """Run a study's grid with submitit (a SLURM job array, or local processes) into the same tree Snakemake
    writes: prepares missing bases first, skips finished cells, then aggregates into cells.parquet and
    curves.parquet. A job that dies without a result is reported as failed; see `qlbench status`."""
    from qlbench.cluster.sweep import sweep as run_sweep

    outcome = run_sweep(study, config_files=list(config_files), executor=executor, results=results,
                        partition=partition, account=account, mem_gb=mem_gb, time_min=time_min,
                        parallel=parallel, gpus=gpus, retries=retries, log_dir=logs, echo=click.echo)
    if outcome.failed:
        raise click.ClickException(f"{len(outcome.failed)} cells failed (see `qlbench status {outcome.study}`)")


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
    from qlbench.analysis.commands import run_bounds

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
    from qlbench.analysis.commands import run_sensitivity

    try:
        click.echo(run_sensitivity(Path(cells_parquet), Path(out), budget, budget_bits))
    except ValueError as e:
        raise QlbenchError(f"sensitivity: {e}") from None


@main.command("qlora-figure")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the figure .png")
def qlora_figure(study_dir, out):
    """The QLoRA study's four panels from STUDY_DIR (results/STUDY): memory per rank, r*, the per-layer ΔW
    similarity matrix and the target variants (each where the grid supports it)."""
    from qlbench.analysis.commands import run_qlora_figure

    click.echo(run_qlora_figure(Path(study_dir), Path(out)))


@main.command()
@_config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
def findings(config_files, study, results):
    """Print, as Markdown, every number the README states about STUDY, from its results (tables, gaps,
    similarity, bound fit and verdicts, sensitivity ranking, validated recommendation)."""
    from qlbench.analysis.findings import findings as study_findings
    from qlbench.study import config as studylib

    name = study or studylib.read_config(config_files).get("study") or "demo"
    root = Path(results or studylib.read_config(config_files).get("results", "results"))
    try:
        click.echo(study_findings(root / name))
    except FileNotFoundError as e:
        raise QlbenchError(f"findings: {e}") from None


@main.command("validate-recommendation")
@click.argument("cells_parquet", type=click.Path(exists=True, dir_okay=False))
@click.argument("recommendation_parquet", type=click.Path(exists=True, dir_okay=False))
@click.argument("rows", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="validation .parquet")
def validate_recommendation(cells_parquet, recommendation_parquet, rows, out):
    """Measured against predicted degradation of the recommended mixed-precision masks (their cells' ROWS)."""
    from qlbench.analysis.commands import run_validation

    lines = run_validation(Path(cells_parquet), Path(recommendation_parquet), [Path(r) for r in rows], Path(out))
    if lines:
        click.echo(lines)


if __name__ == "__main__":
    main()
