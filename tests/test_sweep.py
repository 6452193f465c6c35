"""`qlbench.sweep` with submitit's local executor: the grid's tree, a dead job reported (not waited on), resumption,
finished cells skipped. The SLURM executor is tested in tests/cluster/."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

import qlbench
from qlbench.study import config as study, grid

from conftest import REPO

pytestmark = pytest.mark.workflow
KILLED = "micro-gpt2/b4/r4/all/s0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, micro_resources):
    work = tmp_path_factory.mktemp("sweep-local")
    (work / "resources").symlink_to(micro_resources)
    planted = work / "planted.yaml"
    planted.write_text(yaml.safe_dump({"studies": {"micro": {"fail": f"kill@15:{KILLED}"}}}))
    files = [str(REPO / "config.yaml"), str(planted)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        first = qlbench.sweep("micro", config_files=files, executor="local", retries=0, poll_s=0.5, echo=print)
        second = qlbench.sweep("micro", config_files=files, executor="local", retries=0, poll_s=0.5, echo=print)
    return work, first, second


def test_a_job_that_dies_without_a_result_is_reported_failed(swept):
    work, first, _ = swept
    assert list(first.failed) == [KILLED] and first.failed[KILLED].startswith("killed without a word")
    assert "checkpoint saved" in first.failed[KILLED]
    assert len(first.done) == 2 and first.cells_parquet is None, first


def test_a_rerun_skips_finished_cells_resumes_the_killed_one_and_aggregates(swept):
    work, first, second = swept
    assert sorted(second.skipped) == sorted(first.done) and second.done == [KILLED] and not second.failed, second
    cells = pl.read_parquet(second.cells_parquet)
    micro = study.load(study.read_config([REPO / "config.yaml"]), "micro")
    assert cells.height == len(grid.cells(micro)) and (cells["status"] == "ok").all()
    assert dict(zip(cells["mask"], cells["resumed_from"])) == {"none": 0, "all": 10, "b1.mlp": 0}
    assert (work / "results/micro/curves.parquet").exists()
