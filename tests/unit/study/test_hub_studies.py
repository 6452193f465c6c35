"""The GPU studies that reproduce QaLoF by hub name (GPT-2 small, SQuAD v1.1, AG News) are validated and planned
here, offline: the same code as the offline families, a dry run listing every job, and the one line a cell gives
when the hub cannot be reached. Running them needs a GPU and the Hugging Face cache."""

import os
import subprocess

import pytest

from conftest import BIN, CONFIG_ARGS, job_counts, snakemake


@pytest.mark.parametrize("study, expected", [
    ("qalof-squad", {"cell": 6}),  # 16, 8, 4 bits x 2 seeds
    ("qalof-squad-switch", {"cell": 2}),
    ("qalof-squad-cpt", {"cell": 2}),
    ("qalof-squad-retrain", {"cell": 26}),  # none and each of GPT-2's 12 blocks, x 2 seeds
    ("robustness-agnews", {"cell": 3, "attack": 12, "robust_eval": 27, "robustness": 1}),  # 4 attacked, 3 seeds
])
def test_the_hub_studies_validate_and_plan_every_job_offline(tmp_path, study, expected):
    dry = snakemake(tmp_path, "-n", "--config", f"study={study}")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    counts = job_counts(dry.stdout)
    assert {k: counts.get(k) for k in expected} == expected, counts


def test_a_hub_cell_without_the_network_fails_at_once_in_one_line(tmp_path):
    """qalof-squad's first cell, as a job would run it, with an empty Hugging Face cache and no hub: one line
    naming the model and what to do, and no result."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "cell"
    run = subprocess.run([BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "qalof-squad", "--model",
                          "gpt2", "--bits", "16", "--rank", "8", "--mask", "all", "--seed", "0", "--out", out],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if " cell qalof-squad/gpt2/" not in line]
    assert errors == [  # the cell's own start line (its log's first), then the error
        "Error: model 'gpt2': 'gpt2' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set (download it "
        "once where the hub is reachable, or give a local path)"], run.stderr[-2000:]
    assert not (out / "row.parquet").exists()
