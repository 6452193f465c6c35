"""A sensitivity scan through snakemake: per-module cells, the one-pass estimate, the ranking, a bit budget solved
as an integer program, and the checkpoint that runs the recommended mixed-precision mask — a union that is not in
the grid — as validation cells whose rows feed `measured`."""

import copy
import json

import polars as pl
import pytest

from conftest import snakemake, write_config

pytestmark = pytest.mark.workflow


def test_sensitivity_scan_ranks_and_validates(workdir, repo_config):
    config = copy.deepcopy(repo_config)
    config["studies"] = {"scan": {**config["studies"]["micro"], "bits": [4], "masks": ["none", {"each": "module"}],
                                  "seeds": [0, 1], "high_bits": 8, "probe_bits": 4, "steps": 6}}
    config["study"] = "scan"
    cfg = write_config(workdir / "scan.yaml", config)
    run = snakemake(workdir, "--cores", "2", configfile=cfg)
    assert run.returncode == 0, run.stdout[-3000:]
    out = workdir / "results/scan"
    cells = pl.read_parquet(out / "cells.parquet")
    assert cells.height == 2 * 9  # none + 8 modules (2 blocks x 4), 2 seeds
    ranked = pl.read_parquet(out / "sensitivity/ranking.parquet")
    assert ranked.height == 8 and sorted(ranked["rank_measured"]) == list(range(1, 9))
    assert (ranked["seeds"] == 2).all() and ranked["estimate"].is_not_null().all()
    probes = pl.read_parquet(out / "probes.parquet")
    assert probes.height == 2 * 8 and set(probes["mask"]) == {"none"}  # 2 seeds x 8 modules, reference cells only
    # the checkpoint's budget: 6 bits per weight on average, halfway between 4 and high_bits 8
    rec = pl.read_parquet(out / "sensitivity/recommendation.parquet").row(0, named=True)
    numel = dict(zip(probes["module"].str.extract(r"h\.(\d+\..+)$").map_elements(lambda s: "b" + s,
                                                                                  return_dtype=pl.String),
                     probes["numel"]))
    bit_map = json.loads(rec["bit_map"])
    assert rec["solver"] == "Optimal" and rec["budget_bits"] == 6 and set(bit_map.values()) <= {4, 8}
    average = sum(numel[m] * b for m, b in bit_map.items()) / sum(numel[m] for m in bit_map)
    assert rec["avg_bits"] == pytest.approx(average) and average <= 6
    low = [m for m, b in bit_map.items() if b == 4]
    assert sorted(rec["mask"].split("+")) == sorted(low) and len(low) >= 2  # a union, not a mask of the grid
    assert rec["mask"] not in set(cells["mask"])
    assert rec["predicted_degradation"] == pytest.approx(
        ranked.filter(pl.col("mask").is_in(low))["degradation"].sum())
    # its validation cells ran, and `measured` is their eval loss against the all-8-bit cell of the same seed
    rows = []
    for seed in (0, 1):
        path = out / f"cells/micro-gpt2/b4/r4/{rec['mask']}/s{seed}/row.parquet"
        assert path.exists(), path
        rows.append(pl.read_parquet(path)["eval_loss"][0]
                    - cells.filter((pl.col("mask") == "none") & (pl.col("seed") == seed))["eval_loss"][0])
    validation = pl.read_parquet(out / "sensitivity/validation.parquet").row(0, named=True)
    assert validation["mask"] == rec["mask"] and validation["seeds"] == 2
    assert validation["measured_degradation"] == pytest.approx(sum(rows) / 2, abs=1e-12)
    assert (out / "sensitivity/validation.html").exists() and (out / "sensitivity/recommendation.html").exists()
