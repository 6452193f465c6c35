"""Shared fixtures: the repo's config with the tests' own (the micro model and study), a prepared micro base, and a
way to run snakemake on the repo's workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test reaches a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
BIN = Path(sys.executable).parent
# the user's config, then the tests' fixtures over it (tests/config.yaml: the micro model and study)
CONFIGS = [REPO / "config.yaml", REPO / "tests" / "config.yaml"]
CONFIG_ARGS = [arg for f in CONFIGS for arg in ("-c", f)]  # as every qlbench command takes them


def full_config() -> dict:
    """Both configs merged, the study files read in: every study in one dict, as a test writes it for a run."""
    from qlbench.study import config as studylib

    return studylib.with_studies(studylib.read_config(CONFIGS))


@pytest.fixture(scope="session")
def repo_config() -> dict:
    return full_config()


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def micro_resources(tmp_path_factory) -> Path:
    """A workdir whose resources/ holds the prepared micro-gpt2 base (pretrained once per test session)."""
    work = tmp_path_factory.mktemp("micro-base")
    subprocess.run([BIN / "qlbench", "prepare", *CONFIG_ARGS, "micro-gpt2",
                    "--out", work / "resources/models/micro-gpt2"], check=True, capture_output=True)
    return work / "resources"


@pytest.fixture
def workdir(tmp_path, micro_resources) -> Path:
    """A fresh working directory with the micro base already prepared (copied, so tests stay independent)."""
    shutil.copytree(micro_resources, tmp_path / "resources")
    return tmp_path


def snakemake(workdir: Path, *args, configfile: Path | None = None, timeout: int = 600):
    """Run the repo's workflow in `workdir` on `configfile` (default: CONFIGS); returns the CompletedProcess (stdout
    and stderr together)."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, [configfile] if configfile else CONFIGS), *map(str, args)]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=workdir, env=env, timeout=timeout, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a snakemake run or dry run -> {rule: count}."""
    counts, inside = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            inside, counts = True, {}
            continue
        if inside:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                inside = False
    return counts


def assert_lora_trains(peft_model, inputs, steps: int = 4) -> None:
    """A few AdamW steps on `inputs` (labels = inputs): every lora_A gets a gradient and the loss falls."""
    import torch

    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = peft_model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert losses[-1] < losses[0], losses
