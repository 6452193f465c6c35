"""A cell is its coordinates and its settings: change a study's setting and exactly its cells (and the aggregates)
rerun, `qlbench status` names them stale with what changed, `qlbench aggregate` will not mix them in, and editing
another study reruns nothing. Through the real snakemake, with the local profile's rerun triggers."""

import copy
import shutil
import subprocess

import polars as pl
import pytest

from qlbench.study import config as study, grid

from conftest import BIN, REPO, job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow
PROFILE = ["--profile", str(REPO / "profiles/local"), "--cores", "2"]


def qlbench(work, *args):
    return subprocess.run([BIN / "qlbench", *map(str, args)], cwd=work, capture_output=True, text=True)


def test_a_changed_setting_reruns_exactly_its_cells(tmp_path, micro_resources, repo_config):
    work = tmp_path
    shutil.copytree(micro_resources, work / "resources")
    first = snakemake(work, *PROFILE, "--config", "study=micro")
    assert first.returncode == 0, first.stdout[-3000:]
    cells = grid.cells(study.load(repo_config, "micro"))
    hashes = {c.path: pl.read_parquet(work / "results/micro/cells" / c.path / "row.parquet")["config_hash"][0]
              for c in cells}

    other = copy.deepcopy(repo_config)  # another study's setting: nothing of micro reruns
    other["studies"]["demo"]["steps"] = 7
    other_file = write_config(work / "other.yaml", other)
    dry = snakemake(work, "-n", *PROFILE, "--config", "study=micro", configfile=other_file)
    assert dry.returncode == 0 and "cell" not in job_counts(dry.stdout), dry.stdout[-2000:]

    changed = copy.deepcopy(repo_config)
    changed["studies"]["micro"]["steps"] = 20
    changed_file = write_config(work / "changed.yaml", changed)
    status = qlbench(work, "status", "-c", changed_file, "micro")
    assert status.returncode == 0, status.stderr
    assert f"{len(cells)} cells: 0 done, 0 diverged, {len(cells)} stale" in status.stdout, status.stdout
    assert all(f"stale     {c.path}" in status.stdout for c in cells) and "steps 30 -> 20" in status.stdout
    refused = qlbench(work, "aggregate", "-c", changed_file, "micro")
    assert refused.returncode == 1 and "made under other settings" in refused.stderr and "steps 30 -> 20" in refused.stderr

    dry = snakemake(work, "-n", *PROFILE, "--config", "study=micro", configfile=changed_file)
    counts = job_counts(dry.stdout)
    assert counts["cell"] == len(cells) and counts["aggregate"] == 1 and "prepare_base" not in counts, dry.stdout[-2000:]
    again = snakemake(work, *PROFILE, "--config", "study=micro", configfile=changed_file)
    assert again.returncode == 0, again.stdout[-3000:]
    table = pl.read_parquet(work / "results/micro/cells.parquet")
    assert table.height == len(cells) and (table["steps"] == 20).all() and (table["steps_done"] == 20).all()
    assert not set(table["config_hash"]) & set(hashes.values())
    status = qlbench(work, "status", "-c", changed_file, "micro")
    assert f"{len(cells)} cells: {len(cells)} done" in status.stdout, status.stdout
