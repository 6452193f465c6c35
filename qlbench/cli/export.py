"""Commands that hand results to other tools: `export` (a recommendation, or one cell's merged model, as an HQQ
config, a .gguf file or a compressed-tensors folder) and `track` (finished cells as MLflow runs). `--help` imports
no torch."""

from __future__ import annotations

from pathlib import Path

import click

from qlbench.cli.group import config_option, load_study, main
from qlbench.errors import QlbenchError


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--recommendation", "rec_path", default=None, type=click.Path(dir_okay=False),
              help="recommendation.parquet (default: results/STUDY/sensitivity/recommendation.parquet)")
@click.option("--model", default=None, help="which recommendation: its model")
@click.option("--rank", type=int, default=None, help="which recommendation: its rank")
@click.option("--n-train", type=int, default=None, help="which recommendation: its N")
@click.option("--level", type=click.Choice(["block", "module"]), default=None, help="which recommendation: its level")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="folder for the exports (default: results/STUDY/export)")
@click.option("--format", "fmt", type=click.Choice(["hqq", "gguf", "compressed-tensors"]), default="hqq",
              show_default=True, help="hqq: the HQQ config; gguf: a .gguf file; "
                                      "compressed-tensors: a model folder")
@click.option("--cell", "cell_id", default=None,
              help="gguf / compressed-tensors: one finished cell's merged model (its folder under cells/, e.g. "
                   "tiny-gpt2/b4/r4/all/s0) instead of the recommendation")
@click.option("--deploy", "deploy_name", default=None,
              help="--cell: which of the cell's `deploy` formats (where its study sweeps several), e.g. gguf:Q4_0")
def export(config_files, study, results, rec_path, model, rank, n_train, level, out, fmt, cell_id, deploy_name):
    """A sensitivity recommendation (a width per block or module) as configs other tools load. --format hqq (the
    default): an HQQ per-layer
    config (hqq_*.json: every quantizable linear -> hqq's {nbits, group_size, axis}, null where 16-bit; load it with
    `qlbench.export.load_hqq(model_or_folder, path)`).
    --format gguf: a .gguf file (llama.cpp, Ollama; transformers loads it) of the recommendation's widths on the base,
    or with --cell one finished cell's merged model in its GGUF types (its `deploy: gguf...`, or its own backend's),
    loaded back and its eval loss printed beside the measured one (the cell's; for a recommendation, the base in
    those types by qlbench's backend, as its cells measure it before LoRA). --format compressed-tensors: a model
    folder (vLLM, SGLang; transformers loads it) the same way: W8A16 / W4A16 per layer, GPT-2 written as OPT."""
    import polars as pl

    from qlbench.analysis import applies
    from qlbench.export import hqq, recommendation

    st = load_study(config_files, study)
    root = Path(results or st.results) / st.name
    if cell_id and fmt == "hqq":
        raise QlbenchError("--cell: with --format gguf or compressed-tensors (the HQQ export is a recommendation's)")
    row = None
    if not cell_id:
        path = Path(rec_path) if rec_path else root / "sensitivity" / "recommendation.parquet"
        if not path.exists() and not rec_path and not applies.sensitivity(st):
            others = [n for n in st.config["studies"] if n != st.name and applies.sensitivity(load_study(
                config_files, n)) and set(st.config["studies"][n].get("models", [])) & set(st.models)]
            raise QlbenchError(f"study {st.name} has no recommendation (no single-block or single-module masks to "
                               f"rank): export one of its cells (--cell), or a study on its models that ranks layers"
                               f"{' (' + ', '.join(others) + ')' if others else ''}")
        if not path.exists():
            raise QlbenchError(f"no recommendation at {path}: run the study's sensitivity (snakemake, or qlbench "
                               "sensitivity) first, give --recommendation, or export one cell (--cell)")
        row = recommendation.pick(pl.read_parquet(path), model=model, rank=rank, n_train=n_train, level=level)
        if row.get("model") not in st.config["models"]:
            raise QlbenchError(f"model {row.get('model')!r} of the recommendation is not in the config")
    folder = Path(out) if out else root / "export"
    rebuilt = base = None
    if cell_id:  # the cell's merged model, as it measured it (the writers, a floor below, never import a cell)
        from qlbench.cell.rebuild import rebuild

        rebuilt = rebuild(st, root, cell_id)
    elif fmt != "hqq":  # the base and its eval blocks: the recommendation's file scored against qlbench's backend
        from qlbench.cell.rebuild import base_for

        base = base_for(st, row)
    if fmt == "gguf":
        from qlbench.export import gguf

        for line in gguf.export(st, folder, row=row, cell=rebuilt, deploy=deploy_name, base=base):
            click.echo(line)
        return
    if fmt == "compressed-tensors":  # the compressed-tensors writer's module: the same arguments as gguf's
        try:
            from qlbench.export import compressed_tensors
        except ImportError:
            raise QlbenchError("--format compressed-tensors: not available in this build") from None
        for line in compressed_tensors.export(st, folder, row=row, cell=rebuilt, deploy=deploy_name,
                                                   base=base):
            click.echo(line)
        return
    lay = st.layout(row["model"])
    cfg = hqq.config(row, lay, st.tree.quant, st.name)
    target = hqq.write(cfg, folder / f"hqq_{recommendation.file_name(row)}.json")
    low = sum(c is not None for c in cfg["layers"].values())
    how = ("the same in every block: hqq's quantize_model takes it" if cfg["hqq_quant_config"]
           else "widths differ between blocks: loaded layer by layer")
    click.echo(f"{target}: {low} of {len(cfg['layers'])} linears quantized by HQQ ({how})")


@main.command()
@config_option
@click.argument("study", required=False)
@click.option("--results", default=None, help="results folder (default: the config's, or results/)")
@click.option("--mlflow", "uri", default=None,
              help="MLflow tracking URI (default: sqlite:///results/STUDY/mlflow.db, artifacts in "
                   "results/STUDY/mlartifacts)")
@click.option("--artifacts", default=None, type=click.Path(file_okay=False),
              help="artifact folder of a new experiment (default: results/STUDY/mlartifacts with the default store; "
                   "the server's own otherwise)")
def track(config_files, study, results, uri, artifacts):
    """Log each finished cell of STUDY as an MLflow run in the experiment STUDY: coordinates and settings as
    params, the row's metrics, the training curve as step metrics, the adapter as an artifact. Idempotent: a run
    is keyed by its cell (tag qlbench.cell); unchanged cells are skipped, a changed row updates its run."""
    from qlbench.export import track as tracklib

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise QlbenchError("qlbench track needs mlflow: pip install 'qlbench[track]'") from None
    st = load_study(config_files, study)
    root = results or st.results
    outcome = tracklib.track(st, root, uri, artifacts)
    click.echo(outcome.line(st.name, uri or tracklib.default_uri(root, st.name)[0]))
