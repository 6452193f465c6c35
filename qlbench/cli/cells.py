"""Commands about cells: run one, prepare a base, list masks and the grid, where a study stands, sweep it, gather
its rows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from qlbench import registry
from qlbench.cli.group import config_option, load_study, main
from qlbench.cli.settings import run_epilog
from qlbench.study.targets import PRESET_NAMES
from qlbench.errors import QlbenchError

WARM_PARENT = "QLBENCH_WARM_PARENT"  # set in a cell forked from a warm process: that process's pid


@main.command(epilog=run_epilog())
@config_option
@click.option("--study", default=None, help="study name in the config (default: the config's `study`)")
@click.option("--cell", "cell_path", default=None, metavar="PATH",
              help="the cell's folder under cells/ (e.g. tiny-gpt2/b4/r16/all/s0) instead of the options below")
@click.option("--model", default=None, help="model name in the config")
@click.option("--bits", default=None, type=int,
              help=f"bit width of the masked layers: {registry.span(registry.widths())} (as the backend allows), "
                   "or 16 for none")
@click.option("--rank", default=None, type=int, help="LoRA rank")
@click.option("--mask", default="all", show_default=True, help="which layers get --bits (see `qlbench masks`)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--n-train", type=int, default=None, help="use the first N training examples")
@click.option("--targets", type=click.Choice(PRESET_NAMES), default=None,
              help="LoRA target preset of this cell (a study's `targets: {each: [...]}` axis)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the cell's folder")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a fixed setting of the study")
@click.option("--threads", default=1, show_default=True, type=int, help="torch CPU threads")
@click.option("--warm", is_flag=True,
              help="fork the cell from a warm process that has imported everything already (one per machine or "
                   "SLURM job, started on first use): packs of cells share one start-up")
def run(config_files, study, cell_path, model, bits, rank, mask, seed, n_train, targets, out, overrides, threads,
        warm):
    """Run one cell: quantize, attach LoRA, train, evaluate, write row/curve/adapter/log into OUT."""
    if warm and os.environ.get("QLBENCH_WARM", "1") != "0" and WARM_PARENT not in os.environ:
        from qlbench.cli.group import ARGV
        from qlbench.cluster import warm as warmlib

        code = warmlib.run(ARGV)  # the same command in a child of the warm process (which sees WARM_PARENT set)
        if code is not None:
            sys.exit(code)
    from qlbench.study import config as studylib
    from qlbench.cell.run import run as run_cell
    from qlbench.study.grid import Cell, parse
    from qlbench.cluster.status import Heartbeat
    from qlbench.cluster.lock import CellLock, planned_at
    from qlbench.cluster.runner import cell_hooks

    if cell_path is not None:
        cell = parse(cell_path)
    elif None in (model, bits, rank):
        raise click.UsageError("give --cell PATH, or --model, --bits and --rank")
    else:
        cell = Cell(model, bits, rank, mask, seed, n_train, targets)
    st = load_study(config_files, study)
    settings = studylib.cell_settings(st, dict(studylib.parse_override(o) for o in overrides), cell.bits)
    out_dir = Path(out)
    try:
        # one run of a cell at a time; a concurrent driver that finished it meanwhile leaves its row untouched
        with CellLock(out_dir, studylib.cell_identity(st, cell, settings), echo=click.echo,
                      planned_at=planned_at()) as lock:
            if lock.already_finished:
                click.echo(f"{cell.path}: finished by another run")
                return
            with Heartbeat(out_dir):  # how `qlbench status` tells a running cell from a killed one
                # the cell imports nothing of the cluster: its locks' second names, progress, time limit and
                # planted trouble are lent to it here
                row = run_cell(st, cell, out_dir, settings, threads, cell_hooks(cell.path, settings.get("fail")))
    except QlbenchError:
        raise
    except BaseException as e:  # a cell that cannot run: one line here, the traceback in its log
        _fail(out_dir, e)
    warm_from = os.environ.get(WARM_PARENT)
    click.echo(f"{cell.path}: {row['status']} eval_loss={row['eval_loss']:.4f} "
               f"(before training {row['eval_loss_before']:.4f})" + (f" [warm {warm_from}]" if warm_from else ""))


def _fail(out_dir: Path, e: BaseException):
    import traceback

    from qlbench.study.grid import LOG

    reason = _reason(e)
    full = _full_disk(out_dir)
    if full and "No space left on device" not in reason:  # torch.save on a full disk says only "unexpected pos"
        reason = f"no space left on device ({full}): {reason}"
    if out_dir.exists():
        try:
            with open(out_dir / LOG, "a") as log:
                traceback.print_exception(e, file=log)
                log.write(f"error: {reason}\n")
        except OSError as log_error:  # a full disk or quota: the log cannot take it either; the line below can
            reason += f" (and the log could not be written: {log_error.strerror})"
    click.echo(f"qlbench run: {reason}", err=True)
    sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def _full_disk(out_dir: Path) -> str | None:
    """'<bytes> bytes free under OUT' when the filesystem holding the cell's folder is (all but) full."""
    import shutil

    try:
        free = shutil.disk_usage(out_dir if out_dir.exists() else out_dir.parent).free
    except OSError:
        return None
    return f"{free} bytes free under {out_dir}" if free < 2**20 else None


def _reason(e: BaseException) -> str:
    name = type(e).__name__
    if name == "OutOfMemoryError" or isinstance(e, MemoryError):
        return f"out of memory ({name})"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{name}: {first}" if first else name


@main.command()
@config_option
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
    target = Path(out) if out else models.base_dir(study.resources_root(config), model)
    pretrain(config, model, target, threads=threads, log=click.echo)


@main.command()
@config_option
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
@config_option
@click.argument("study", required=False)
@click.option("--count", is_flag=True, help="print only the number of cells")
def grid(config_files, study, count):
    """Validate the config and list a study's cells (their folders under results/STUDY/cells/)."""
    from qlbench.study import grid as gridlib

    cells = gridlib.cells(load_study(config_files, study))
    click.echo(str(len(cells)) if count else "\n".join(c.path for c in cells))


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--allow-missing", is_flag=True, help="aggregate whatever cells are complete")
def aggregate(config_files, study, results, allow_missing):
    """Gather a study's cells into results/STUDY/cells.parquet, curves.parquet and probes.parquet."""
    from qlbench.analysis.aggregate import aggregate as run_aggregate
    from qlbench.results import write_parquet

    st = load_study(config_files, study)
    root = results or st.results
    corrupt: dict[str, str] = {}
    tables, missing, stale = run_aggregate(st, root, corrupt)
    if corrupt and not allow_missing:
        first, why = next(iter(corrupt.items()))
        raise QlbenchError(f"{len(corrupt)} cells have a result file that cannot be read (first: {first}: {why}); "
                           "rerun them (snakemake or qlbench sweep reruns corrupt cells), or use --allow-missing "
                           "to leave them out")
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
               (f", {len(corrupt)} corrupt left out" if corrupt else "") +
               (f", {len(stale)} made under other settings left out" if stale else ""))


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--profile", default="profiles/slurm", show_default=True,
              help="the Snakemake profile the resubmit command names")
@click.option("--all", "show_all", is_flag=True, help="list every cell, not only those that are not done")
@click.option("--watch", is_flag=True, help="refresh every --every seconds until no cell runs or waits (Ctrl-C ends it)")
@click.option("--every", default=10.0, show_default=True, type=click.FloatRange(min=0.5), help="seconds between refreshes")
def status(config_files, study, results, profile, show_all, watch, every):
    """Cells done, diverged, failed (with the reason from each log), running (at which step of N) and missing, when
    the running sweep should end, and the command that resubmits the failed and missing ones. Reads files only: no
    scheduler, no model."""
    import time

    from qlbench.cluster import status as statuslib

    st = load_study(config_files, study)
    root = results or st.results
    commands = statuslib.resubmit_commands(st.name, list(config_files), results, profile)
    while True:
        statuses = statuslib.study_status(st, root)
        estimate = statuslib.study_estimate(st, root, statuses)
        text = statuslib.report(st, statuses, f"{root}/{st.name}/cells", commands, show_all, estimate)
        if not watch:
            return click.echo(text)
        click.clear()
        click.echo(text)
        if not any(s.state in ("running", "missing") for s in statuses):
            return
        try:
            time.sleep(every)
        except KeyboardInterrupt:
            return


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--executor", type=click.Choice(["slurm", "local"]), default="slurm", show_default=True,
              help="a SLURM job array, or processes on this machine")
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--partition", default=None, help="SLURM partition (default: the cluster's default)")
@click.option("--account", default=None, help="SLURM account (default: none given)")
@click.option("--profile", default=None,
              help="the Snakemake profile whose policy the sweep follows: retries, each attempt's memory and time, "
                   "pack sizes (default: profiles/slurm)")
@click.option("--mem-gb", default=None, type=float,
              help="memory per cell on the first attempt (default: the profile's); retries grow it as the profile does")
@click.option("--time-min", default=None, type=int,
              help="time limit per cell on the first attempt, in minutes (default: the profile's); retries grow it")
@click.option("--parallel", default=None, type=int,
              help="jobs at once (default: all for slurm; for local, as many as the CPUs hold)")
@click.option("--gpus", default=None, type=int, help="GPUs per cell (default: the study's `gpus`)")
@click.option("--retries", default=None, type=int,
              help="resubmit a failed cell this many times, with the memory and time of its attempt (default: the "
                   "profile's)")
@click.option("--cells-per-job", default=None, type=int,
              help="cells per job, run one after another and forked from one warm process (a pack; default: the "
                   "profile's pack for slurm, 1 for local)")
@click.option("--cells-at-once", default=None, type=int,
              help="cells of a pack that run side by side (sharing the job's GPUs: cells per GPU); the job asks for "
                   "their memory and CPUs, one cell's GPUs, and the time of its rounds (default: the profile's)")
@click.option("--logs", default=None, help="submitit's folder (default: RESULTS/STUDY/logs/sweep)")
def sweep(config_files, study, executor, results, partition, account, profile, mem_gb, time_min, parallel, gpus,
          retries, cells_per_job, cells_at_once, logs):
    """Run a study's grid with submitit (a SLURM job array, or local processes) into the same tree Snakemake
    writes: prepares missing bases first, skips finished cells, then aggregates into cells.parquet and
    curves.parquet. A job that dies without a result is reported as failed; see `qlbench status`. Retries, each
    attempt's memory and time, and pack sizes are the Snakemake profile's (one policy for both drivers)."""
    from qlbench.cluster.sweep import sweep as run_sweep

    outcome = run_sweep(study, config_files=list(config_files), executor=executor, results=results,
                        partition=partition, account=account, mem_gb=mem_gb, time_min=time_min,
                        parallel=parallel, gpus=gpus, retries=retries, cells_per_job=cells_per_job,
                        cells_at_once=cells_at_once, profile=profile, log_dir=logs, echo=click.echo)
    if outcome.failed:
        raise click.ClickException(f"{len(outcome.failed)} cells failed (see `qlbench status {outcome.study}`)")
