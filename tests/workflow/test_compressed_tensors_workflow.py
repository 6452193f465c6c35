"""`backend: compressed_tensors` and `deploy: compressed_tensors:w8a16` through the real snakemake on the micro base
(the demo's GPT-2 shape, smaller), on the CPU: a W4A16 cell (groups of 32: the micro base's 64 inputs) and a fake
4-bit cell whose merged model is deployed as W8A16; then `qlbench export --format compressed-tensors --cell` writes
each merged model as a folder transformers loads offline, every layer in the planned scheme, with the eval loss the
cell measured; and a recommendation (a width per block) exports with its widths."""

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
STUDIES = {
    "micro_ct": {"backend": "compressed_tensors", "group_size": 32},
    "micro_ct_deploy": {"format": "int", "deploy": "compressed_tensors:w8a16"},
}


def export(path, study, *args, cwd, env):
    out = subprocess.run([BIN / "qlbench", "export", "-c", path, study, "--format", "compressed-tensors", *args],
                         cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_compressed_tensors_studies_run_and_their_cells_export_as_measured(workdir, repo_config):
    pytest.importorskip("compressed_tensors")
    from qlbench.export import compressed_tensors as ect

    config = copy.deepcopy(repo_config)
    for name, change in STUDIES.items():
        config["studies"][name] = {**config["studies"]["micro"], "steps": 3, "checkpoint_every": 0,
                                   "eval_batches": 2, "bits": [4], "masks": ["all"], **change}
    path = write_config(workdir / "ct.yaml", config)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    runs = {name: subprocess.Popen([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", workdir,
                                    "--configfile", path, "--cores", "1", f"results/{name}/cells.parquet",
                                    "--config", f"study={name}"], cwd=workdir, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for name in STUDIES}
    for proc in runs.values():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]

    own = pl.read_parquet(workdir / "results/micro_ct/cells.parquet").row(0, named=True)
    assert own["backend"] == "compressed_tensors" and own["status"] == "ok" and own["n_quantized"] == 8
    log = (workdir / f"results/micro_ct/cells/{CELL}/log.txt").read_text()
    assert "quantized 8 modules (compressed_tensors int)" in log
    layers = pl.read_parquet(workdir / f"results/micro_ct/cells/{CELL}/layers.parquet")
    assert set(layers["module_type"]) == {"w4a16"}
    stdout = export(path, "micro_ct", "--cell", CELL, cwd=workdir, env=env)
    assert "8 of 8 linears in compressed-tensors schemes (w4a16 x8)" in stdout
    loss = float(re.search(r"transformers' default load\): ([0-9.]+)", stdout).group(1))
    assert loss == pytest.approx(own["merged_requant_eval_loss"], abs=1e-5)
    folder = workdir / "results/micro_ct/export/ct_micro-gpt2_b4_r4_all_s0"
    assert set(ect.layer_schemes(folder).values()) == {"w4a16"} and len(ect.layer_schemes(folder)) == 12
    assert (folder / "tokenizer.json").exists()
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert {g["weights"]["group_size"] for g in qc["config_groups"].values()} == {32}

    dep = pl.read_parquet(workdir / "results/micro_ct_deploy/cells.parquet").row(0, named=True)
    assert dep["deploy"] == "compressed_tensors:w8a16" and set(json.loads(dep["deploy_types"]).values()) == {"w8a16"}
    # W8A16 is closer to the merged float model than the cell's own 4 bits
    assert abs(dep["deployed_eval_loss"] - dep["merged_eval_loss"]) < abs(dep["merged_requant_eval_loss"]
                                                                          - dep["merged_eval_loss"])
    stdout = export(path, "micro_ct_deploy", "--cell", CELL, cwd=workdir, env=env)
    assert "(w8a16 x8)" in stdout
    loss = float(re.search(r"transformers' default load\): ([0-9.]+)", stdout).group(1))
    assert loss == pytest.approx(dep["deployed_eval_loss"], abs=1e-5)

    rec = workdir / "rec.parquet"  # a recommendation as qlbench sensitivity writes one: block 0 at 8 bits, 1 at 4
    pl.DataFrame([{"model": "micro-gpt2", "n_train": None, "rank": 4, "level": "block",
                   "bit_map": json.dumps({"b0": 8, "b1": 4})}]).write_parquet(rec)
    stdout = export(path, "micro_ct", "--recommendation", rec, cwd=workdir, env=env)
    assert "(w4a16 x4, w8a16 x4)" in stdout
    schemes = ect.layer_schemes(workdir / "results/micro_ct/export/ct_micro-gpt2_r4_block")
    assert schemes["model.decoder.layers.0.self_attn.q_proj"] == "w8a16"
    assert schemes["model.decoder.layers.1.fc2"] == "w4a16"
