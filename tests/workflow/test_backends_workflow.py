"""`backend: hqq` and `backend: torchao` studies through the real snakemake on the micro base, on the CPU: two
quantized cells each, their rows saying which backend quantized them, with the backends' real weight bytes."""

import copy
import os
import subprocess

import polars as pl
import pytest

from conftest import BIN, REPO, write_config

pytestmark = pytest.mark.workflow

STUDIES = {  # two quantized cells each, as short as a cell gets
    "micro_hqq": {"backend": "hqq", "format": "int", "bits": [4, 2], "masks": ["all"]},
    "micro_torchao": {"backend": "torchao", "format": "nf", "bits": [4], "masks": ["all", "b1.mlp"]},
}


def test_hqq_and_torchao_cells_run_in_a_study(workdir, repo_config):
    config = copy.deepcopy(repo_config)
    for name, change in STUDIES.items():
        config["studies"][name] = {**config["studies"]["micro"], "steps": 3, "checkpoint_every": 0,
                                   "eval_batches": 2, **change}
    path = write_config(workdir / "backends.yaml", config)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    runs = {  # both studies at once, one core each, only as far as their cells table
        name: subprocess.Popen([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", workdir,
                                "--configfile", path, "--cores", "1", f"results/{name}/cells.parquet",
                                "--config", f"study={name}"], cwd=workdir, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name in STUDIES}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    hqq = pl.read_parquet(workdir / "results/micro_hqq/cells.parquet").sort("bits")
    assert hqq["backend"].to_list() == ["hqq", "hqq"] and hqq["bits"].to_list() == [2, 4]
    assert (hqq["status"] == "ok").all() and (hqq["n_quantized"] == 8).all()
    # 2 bits are further from the float base than 4, and hold fewer bytes (packed codes, fp32 scales and zeros)
    assert hqq["quant_mse"][0] > hqq["quant_mse"][1] and hqq["weight_mem_mb"][0] < hqq["weight_mem_mb"][1]
    ao = pl.read_parquet(workdir / "results/micro_torchao/cells.parquet").sort("mask")
    assert ao["backend"].to_list() == ["torchao", "torchao"] and ao["mask"].to_list() == ["all", "b1.mlp"]
    assert (ao["status"] == "ok").all() and ao["n_quantized"].to_list() == [8, 2]
    assert ao["weight_mem_mb"][0] < ao["weight_mem_mb"][1]
    log = (workdir / "results/micro_torchao/cells/micro-gpt2/b4/r4/all/s0/log.txt").read_text()
    assert "quantized 8 modules (torchao nf)" in log
