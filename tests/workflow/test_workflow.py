"""The micro study through the real snakemake on the CPU: the grid, the rows, re-running one cell, lint."""

import os
import shutil
import statistics

import polars as pl
import pytest

from qlbench.study import config as study, grid

from conftest import CONFIG_ARGS, REPO, job_counts, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def micro(repo_config):
    return study.load(repo_config, "micro")


@pytest.fixture(scope="module")
def ran(tmp_path_factory, micro_resources, micro):
    """One real run of the micro study, shared by the tests below."""
    work = tmp_path_factory.mktemp("micro-run")
    shutil.copytree(micro_resources, work / "resources")
    dry = snakemake(work, "-n", "--config", "study=micro")
    run = snakemake(work, "--cores", "2", "--config", "study=micro")
    assert run.returncode == 0, run.stdout[-3000:]
    return work, dry.stdout, run.stdout


def test_dry_run_counts_the_grid(ran, micro):
    _, dry, _ = ran
    quantized = [b for b in micro.bits if b < 16]
    expected = len(micro.models) * len(micro.ranks) * len(micro.seeds) * (
        len(quantized) * len(micro.masks["micro-gpt2"]) + (16 in micro.bits))
    assert job_counts(dry)["cell"] == expected == len(grid.cells(micro))


def test_every_cell_has_a_complete_row(ran, micro):
    work, _, _ = ran
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    assert sorted(cells["mask"] + "/" + cells["bits"].cast(str)) == sorted(
        f"{c.mask}/{c.bits}" for c in grid.cells(micro))
    assert (cells["status"] == "ok").all()
    for column in ("eval_loss_before", "eval_loss", "eval_ppl", "train_loss_final", "step_time_s",
                   "tokens_per_s", "peak_mem_mb", "wall_s"):
        assert cells[column].is_finite().all() and (cells[column] > 0).all(), column
    assert (cells["trainable_params"] > 0).all() and cells["config_hash"].n_unique() == cells.height
    quantized = cells.filter(pl.col("bits") < 16)
    assert (quantized["n_quantized"] > 0).all() and (quantized["quant_mse"] > 0).all()
    assert (cells.filter(pl.col("bits") == 16)["n_quantized"] == 0).all()
    curves = pl.read_parquet(work / "results/micro/curves.parquet")
    assert curves.height == cells.height * micro.settings["steps"]
    for name in ("summary.md", "summary.csv", "figures/eval_loss_vs_bits.png"):
        assert (work / "results/micro" / name).stat().st_size > 0
    # the summary's means and standard deviations are those of the rows, configuration by configuration
    summary = pl.read_csv(work / "results/micro/summary.csv")
    for conf in summary.iter_rows(named=True):
        rows = cells.filter((pl.col("bits") == conf["bits"]) & (pl.col("rank") == conf["rank"])
                            & (pl.col("mask") == conf["mask"]))
        assert conf["seeds"] == rows.height == len(micro.seeds)
        assert conf["eval_loss_mean"] == pytest.approx(sum(rows["eval_loss"]) / rows.height, rel=1e-12)
        if rows.height > 1:
            assert conf["eval_loss_sd"] == pytest.approx(statistics.stdev(rows["eval_loss"]), rel=1e-9)
    assert summary.height == len(grid.cells(micro)) // len(micro.seeds)


def test_deleting_a_cell_reruns_only_it_and_the_aggregates(ran, micro):
    work, _, _ = ran
    cell = next(c for c in grid.cells(micro) if c.bits < 16)
    folder = work / "results/micro/cells" / cell.path
    before = pl.read_parquet(folder / "row.parquet")
    shutil.rmtree(folder)
    dry = snakemake(work, "-n", "--config", "study=micro")
    counts = job_counts(dry.stdout)
    aggregates = {"aggregate", "summarize", "similarity", "qlora_figure", "bounds", "plan", "sensitivity",
                  "validate_recommendation"}
    assert counts["cell"] == 1 and counts["aggregate"] == 1, dry.stdout[-2000:]
    assert set(counts) - {"cell", "all", "total"} <= aggregates  # no base is prepared again, no other cell runs
    rerun = snakemake(work, "--cores", "2", "--config", "study=micro")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    after = pl.read_parquet(folder / "row.parquet")
    # the same cell, seed and machine give the same numbers
    for column in ("eval_loss_before", "eval_loss", "train_loss_final", "quant_mse", "config_hash"):
        assert after[column][0] == before[column][0], column


def test_a_snakemake_start_never_waits_on_a_slurm_controller(tmp_path, monkeypatch):
    """Snakemake imports every executor plugin at start, and the slurm plugin asks `scontrol show config` then:
    with SLURM's client installed and no controller up, that call waited 9-10 s on every command, local runs
    included. The profile's executor points that one call at no configuration (it fails at once). Here a fake
    scontrol records the configuration each call would read; none may read the machine's own."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "scontrol-calls"
    for tool, body in (("sinfo", "exit 0"), ("squeue", "exit 0"), ("sacct", "exit 0"),
                       ("scontrol", f'echo "${{SLURM_CONF:-the machine\'s}}" >> {calls}; exit 1')):
        (fake / tool).write_text(f"#!/bin/sh\n{body}\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    run = snakemake(tmp_path, "-n", "--config", "study=micro")
    assert run.returncode == 0, run.stdout[-3000:]
    asked = calls.read_text().split("\n")[:-1] if calls.exists() else []
    # none asked: the slurm plugin no longer calls scontrol at import, and the guard can go
    assert asked and set(asked) == {os.devnull}, f"configurations scontrol read: {asked}"


def test_lint_is_clean():
    run = snakemake(REPO, "--lint")
    assert "Congratulations" in run.stdout or run.stdout.strip() == "", run.stdout[-3000:]


def test_findings_print_the_numbers_of_the_results(ran, micro):
    """`qlbench findings` (the README's tables) reads the study's results: its numbers are the rows' numbers."""
    import subprocess

    from conftest import BIN

    work, _, _ = ran
    out = subprocess.run([BIN / "qlbench", "findings", *CONFIG_ARGS, "micro"], cwd=work,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    sixteen = cells.filter(pl.col("bits") == 16)["eval_loss"][0]
    gap = cells.filter((pl.col("bits") == 4) & (pl.col("mask") == "all"))["eval_loss"][0] - sixteen
    assert f"| {sixteen:.4f} |" in out.stdout and f"| all | 4 | {round(gap, 4):.4g} |" in out.stdout, out.stdout
