"""LoRA targets as an axis of the grid (`targets: {each: [...]}`): one cell per preset, each with its own folder,
row, reference and summary line — through the real snakemake on the micro base."""

import copy
import shutil

import polars as pl
import pytest

from qlbench.study import config as study, grid

from conftest import job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow


def test_targets_axis_runs_one_cell_per_preset(tmp_path, micro_resources, repo_config):
    shutil.copytree(micro_resources, tmp_path / "resources")
    config = copy.deepcopy(repo_config)
    config["studies"]["micro"].update(bits=[16, 4], masks=["all"], steps=10, targets={"each": ["qv", "attn"]})
    path = write_config(tmp_path / "targets.yaml", config)
    st = study.load(config, "micro")
    cells = grid.cells(st)
    assert [c.path for c in cells] == ["micro-gpt2/tqv/b16/r4/none/s0", "micro-gpt2/tqv/b4/r4/all/s0",
                                       "micro-gpt2/tattn/b16/r4/none/s0", "micro-gpt2/tattn/b4/r4/all/s0"]
    assert all(grid.parse(c.path) == c for c in cells)
    run = snakemake(tmp_path, "--cores", "2", "--config", "study=micro", configfile=path)
    assert run.returncode == 0, run.stdout[-3000:]
    table = pl.read_parquet(tmp_path / "results/micro/cells.parquet")
    params = {t: table.filter(pl.col("targets") == t)["trainable_params"].unique().to_list() for t in ("qv", "attn")}
    # micro-gpt2: 2 blocks, width 64, rank 4. qv: A (4x64) and B (192x4) on c_attn; attn adds c_proj (4x64 + 64x4)
    assert params == {"qv": [2 * (4 * 64 + 192 * 4)], "attn": [2 * (4 * 64 + 192 * 4 + 4 * 64 + 64 * 4)]}
    assert table["config_hash"].n_unique() == 4
    summary = pl.read_csv(tmp_path / "results/micro/summary.csv")
    assert sorted(zip(summary["targets"], summary["bits"])) == [("attn", 4), ("attn", 16), ("qv", 4), ("qv", 16)]
    pairs = pl.read_parquet(tmp_path / "results/micro/similarity.parquet")
    assert sorted(pairs["targets"]) == ["attn", "qv"]  # each quantized cell against the 16-bit cell of its preset
    dry = snakemake(tmp_path, "-n", "--config", "study=micro", configfile=path)
    assert "cell" not in job_counts(dry.stdout), dry.stdout[-2000:]
