"""QaLoF offline, end to end through the real snakemake on the micro base: an extractive-QA study of each kind
(static with PTQ, switchable with a hybrid map and the layer-wise scan, CPT, the scan retrained per mask), then
`qlbench qalof-table` over all four — every configuration of QaLoF's table, and the two scans side by side."""

import copy
import shutil
import subprocess

import polars as pl
import pytest

from conftest import BIN, snakemake, write_config

pytestmark = pytest.mark.workflow
STUDIES = ("qalof-qa-cpu", "qalof-qa-cpu-switch", "qalof-qa-cpu-cpt", "qalof-qa-cpu-retrain")


def test_qalof_studies_run_through_snakemake_and_make_qaLoFs_table(tmp_path, micro_resources, repo_config):
    shutil.copytree(micro_resources, tmp_path / "resources")
    config = copy.deepcopy(repo_config)
    config["datasets"]["trivia-spans"].update(passages=1, copies=1)  # contexts that fit micro-gpt2's 64 positions
    for name in STUDIES:
        config["studies"][name].update(models=["micro-gpt2"], seeds=[0], steps=12, seq_len=64, batch_size=8)
    config["studies"]["qalof-qa-cpu-cpt"]["cpt_cycles"] = 1
    config["studies"]["qalof-qa-cpu-switch"]["eval_maps"] = {"hybrid": {"b0.attn.c_proj+b1": 4}}
    path = write_config(tmp_path / "qalof.yaml", config)
    for name in STUDIES:
        run = snakemake(tmp_path, "--cores", "2", "--config", f"study={name}", configfile=path)
        assert run.returncode == 0, run.stdout[-3000:]
    cells = [tmp_path / f"results/{s}/cells.parquet" for s in STUDIES]
    done = subprocess.run([BIN / "qlbench", "qalof-table", *cells, "--out", tmp_path / "qalof"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pl.read_parquet(tmp_path / "qalof/qalof_table.parquet")
    assert set(table["configuration"]) == {
        "FP LoRA", "8-bit static PTQ", "4-bit static PTQ", "FP, random precision", "LoRA, 8-bit base",
        "LoRA, 4-bit base", "switchable, all-8", "switchable, all-4", "switchable, random precision",
        "switchable, hybrid", *(f"CPT at {w} bits" for w in range(4, 9)), "CPT, random precision"}
    assert table["em"].is_between(0, 100).all() and table["f1"].is_between(0, 100).all()
    scan = pl.read_parquet(tmp_path / "qalof/qalof_scan.parquet")
    assert sorted(scan["mask"]) == ["b0", "b1"]  # each block: scanned on one model, and retrained
    assert scan["scan_s"][0] > 0 and scan["retrain_s"][0] > scan["scan_s"][0]
    rows = pl.read_parquet(tmp_path / "results/qalof-qa-cpu-retrain/cells.parquet")
    assert (rows["task"] == "extractive_qa").all()
    ranking = pl.read_parquet(tmp_path / "results/qalof-qa-cpu-retrain/sensitivity/ranking.parquet")
    assert set(ranking["metric"]) == {"f1"}  # a QA study's sensitivity ranks by its metric
    assert "QaLoF's table" in (tmp_path / "qalof/qalof_table.md").read_text()
    gaps = pl.read_parquet(tmp_path / "qalof/qalof_gaps.parquet")  # one seed decides nothing, and says so
    assert "4-bit static PTQ vs FP" in set(gaps["gap"]) and "switchable: all-4 vs all-8" in set(gaps["gap"])
    assert set(gaps.filter(pl.col("metric") != "spearman")["verdict"]) == {"not established with 1 seed"}
