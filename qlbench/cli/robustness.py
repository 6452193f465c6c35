"""Adversarial robustness under quantization (QaLoF's GBDA experiment): attack a finished full-precision
classification cell once, evaluate it at each precision, and tabulate."""

from __future__ import annotations

from pathlib import Path

import click

from qlbench.cli.group import config_option, load_study, main
from qlbench.errors import QlbenchError

from qlbench.study.settings import ROBUST_PRECISIONS as PRECISIONS


def _cell_options(f):
    for option in reversed([
        click.option("--study", default=None, help="study name in the config (default: the config's `study`)"),
        click.option("--model", required=True, help="model name in the config"),
        click.option("--rank", required=True, type=int, help="LoRA rank of the fine-tuned cell"),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--cell-dir", required=True, type=click.Path(file_okay=False, exists=True),
                     help="the finished 16-bit classification cell (its adapter.safetensors)"),
        click.option("--threads", default=1, show_default=True, type=int, help="torch CPU threads"),
    ]):
        f = option(f)
    return config_option(f)


def _cell(config_files, study, model, rank, seed):
    from qlbench.study.grid import Cell

    st = load_study(config_files, study)
    if st.tree.data.task != "classification":
        raise QlbenchError(f"study {st.name!r}: the robustness experiment needs `task: classification`")
    if model not in st.models:
        raise QlbenchError(f"study {st.name!r} has no model {model!r}; models: {', '.join(st.models)}")
    return st, Cell(model, 16, rank, "none", seed)


@main.command()
@_cell_options
@click.option("--attacked", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
              help="the precision of the model attacked white-box (random: a width drawn per attack step)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="adversarial.parquet to write")
def attack(config_files, study, model, rank, seed, cell_dir, threads, attacked, out):
    """GBDA (Guo et al. 2021) against a fine-tuned classifier at one precision: one adversarial text per held-out
    text (the study's `robustness.examples`), written with both predictions to OUT."""
    from qlbench.attack import robustness

    st, cell = _cell(config_files, study, model, rank, seed)
    robustness.attack(st, cell, st.tree, Path(cell_dir), Path(out), attacked, threads)


@main.command("robust-eval")
@_cell_options
@click.option("--precision", required=True, type=click.Choice(PRECISIONS),
              help="fp32, PTQ at 8/4 bits (fake int or bitsandbytes), or random precision per forward pass")
@click.option("--adversarial", required=True, type=click.Path(dir_okay=False, exists=True),
              help="an attack's adversarial.parquet (its `attacked` column: the model its texts were made against)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the row's .parquet")
def robust_eval(config_files, study, model, rank, seed, cell_dir, threads, precision, adversarial, out):
    """Clean and adversarial accuracy of the fine-tuned classifier at one precision, on the attack's texts."""
    from qlbench.attack import robustness

    st, cell = _cell(config_files, study, model, rank, seed)
    robustness.evaluate(st, cell, st.tree, Path(cell_dir), Path(adversarial), precision, Path(out), threads)


@main.command("robustness")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="where robustness.md and robustness.parquet go")
def robustness_table(folder, out):
    """The QaLoF-shaped table from a study's robustness folder: clean and adversarial accuracy per precision, mean and
    95% CI over seeds, attack success, and the attack per seed. Reads parquet only."""
    from qlbench.analysis import robustness

    summary = robustness.write(Path(folder), Path(out))
    if summary.is_empty():
        raise QlbenchError(f"{folder}: no robustness rows")
    click.echo((Path(out) / "robustness.md").read_text())
