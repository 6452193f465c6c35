"""`backend: gguf` with `deploy: gguf:Q8_0` through the real snakemake on the micro base, on the CPU: one quantized
cell whose base is rounded to Q4_0 by gguf-py, its merged model requantized in Q8_0 (`deployed_eval_loss`, the type
of every layer recorded, the deploy_cost table made by the workflow); then `qlbench export --format gguf --cell` writes that merged model as a .gguf that
transformers loads offline, with Q8_0 in every planned layer and the eval loss the cell measured."""

import copy
import json
import os
import re
import subprocess

import polars as pl
import pytest

from conftest import BIN, REPO, write_config

pytestmark = pytest.mark.workflow

CELL = "micro-gpt2/b4/r4/all/s0"


def test_a_gguf_study_runs_and_its_cell_exports_as_the_gguf_it_measured(workdir, repo_config):
    pytest.importorskip("gguf")
    config = copy.deepcopy(repo_config)
    config["studies"]["micro_gguf"] = {**config["studies"]["micro"], "steps": 3, "checkpoint_every": 0,
                                       "eval_batches": 2, "backend": "gguf", "bits": [4], "masks": ["all"],
                                       "deploy": "gguf:Q8_0"}
    path = write_config(workdir / "gguf.yaml", config)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", workdir, "--configfile",
                          path, "--cores", "1", "results/micro_gguf/cells.parquet", "results/micro_gguf/deploy_cost.md", "--config", "study=micro_gguf"],
                         cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    row = pl.read_parquet(workdir / "results/micro_gguf/cells.parquet").row(0, named=True)
    assert row["backend"] == "gguf" and row["status"] == "ok" and row["n_quantized"] == 8
    assert row["deploy"] == "gguf:Q8_0" and set(json.loads(row["deploy_types"]).values()) == {"Q8_0"}
    layers = pl.read_parquet(workdir / f"results/micro_gguf/cells/{CELL}/layers.parquet")
    assert set(layers["module_type"]) == {"Q4_0"}
    # Q8_0 is closer to the merged float model than the cell's own Q4_0
    assert abs(row["deployed_eval_loss"] - row["merged_eval_loss"]) < abs(row["merged_requant_eval_loss"]
                                                                          - row["merged_eval_loss"])
    assert "| micro-gpt2 | 4 | 4 | all | gguf:Q8_0 | 1 |" in (workdir / "results/micro_gguf/deploy_cost.md").read_text()
    out = subprocess.run([BIN / "qlbench", "export", "-c", path, "micro_gguf", "--format", "gguf", "--cell", CELL],
                         cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 of 8 linears in GGUF types (Q8_0 x8)" in out.stdout
    loss = float(re.search(r"as transformers loads it: ([0-9.]+)", out.stdout).group(1))
    assert loss == pytest.approx(row["deployed_eval_loss"], abs=1e-5)
    from qlbench.export import gguf as eg

    stored = eg.stored_types(workdir / "results/micro_gguf/export/gguf_micro-gpt2_b4_r4_all_s0.gguf")
    assert stored["blk.0.attn_qkv.weight"] == "Q8_0" and stored["token_embd.weight"] == "F32"
