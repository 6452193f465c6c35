"""A sensitivity scan through snakemake: per-block cells, the one-pass estimate, the ranking, and the checkpoint
that runs the recommended mixed-precision mask as validation cells."""

import copy

import polars as pl
import pytest

from conftest import job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow


def test_sensitivity_scan_ranks_and_validates(workdir, repo_config):
    config = copy.deepcopy(repo_config)
    config["studies"] = {"scan": {**config["studies"]["micro"], "bits": [4], "masks": ["none", {"each": "block"}],
                                  "seeds": [0, 1], "high_bits": 8, "probe_bits": 4, "steps": 6}}
    config["study"] = "scan"
    cfg = write_config(workdir / "scan.yaml", config)
    run = snakemake(workdir, "--cores", "2", configfile=cfg)
    assert run.returncode == 0, run.stdout[-3000:]
    assert job_counts(run.stdout)["cell"] == 2 * 3
    out = workdir / "results/scan"
    ranked = pl.read_parquet(out / "sensitivity/ranking.parquet")
    assert sorted(ranked["mask"]) == ["b0", "b1"] and sorted(ranked["rank_measured"]) == [1, 2]
    assert (ranked["seeds"] == 2).all() and ranked["estimate"].is_not_null().all()
    assert (ranked["estimate"] > 0).all()
    probes = pl.read_parquet(out / "probes.parquet")
    assert probes.height == 2 * 8 and set(probes["mask"]) == {"none"}  # 2 seeds x 8 modules, reference cells only
    validation = pl.read_parquet(out / "sensitivity/validation.parquet")
    least = ranked.sort("degradation")["mask"][0]
    assert validation["mask"].to_list() == [least] and validation["seeds"].to_list() == [2]
    assert validation["measured_degradation"][0] == pytest.approx(ranked.sort("degradation")["degradation"][0])
