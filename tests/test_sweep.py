"""`qlbench.sweep` with submitit's local executor: the grid's tree, a dead job reported (not waited on), resumption,
finished cells skipped. The SLURM executor is tested in tests/cluster/."""

from __future__ import annotations

import re

import polars as pl
import pytest
import yaml

import qlbench
from qlbench.cluster.sweep import job_size
from qlbench.study import config as study, grid

from conftest import CONFIGS

pytestmark = pytest.mark.workflow
KILLED = "micro-gpt2/b4/r4/all/s0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, micro_resources):
    work = tmp_path_factory.mktemp("sweep-local")
    (work / "resources").symlink_to(micro_resources)
    planted = work / "planted.yaml"
    planted.write_text(yaml.safe_dump({"studies": {"micro": {"fail": f"kill@15:{KILLED}"}}}))
    files = [*map(str, CONFIGS), str(planted)]
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
    micro = study.load(study.read_config(CONFIGS), "micro")
    assert cells.height == len(grid.cells(micro)) and (cells["status"] == "ok").all()
    assert dict(zip(cells["mask"], cells["resumed_from"])) == {"none": 0, "all": 10, "b1.mlp": 0}
    assert (work / "results/micro/curves.parquet").exists()


def test_a_pack_keeps_its_finished_cells_when_one_fails_and_matches_unpacked_rows(swept, tmp_path, micro_resources):
    """All three cells in one job, two at a time, forked from its warm process: the failing one fails alone, the
    rerun runs only it, and the rows equal those of the unpacked sweep (one process per cell)."""
    from qlbench.results import PROVENANCE, TIMING_COLUMNS

    unpacked, _, _ = swept
    (tmp_path / "resources").symlink_to(micro_resources)
    fails = "micro-gpt2/b4/r4/b1.mlp/s0"
    planted = tmp_path / "planted.yaml"
    planted.write_text(yaml.safe_dump({"studies": {"micro": {"fail": f"first:{fails}"}}}))
    files = [*map(str, CONFIGS), str(planted)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        first = qlbench.sweep("micro", config_files=files, executor="local", retries=0, cells_per_job=3,
                              cells_at_once=2, poll_s=0.5, echo=print)
        second = qlbench.sweep("micro", config_files=files, executor="local", retries=0, cells_per_job=3,
                               poll_s=0.5, echo=print)
    assert list(first.failed) == [fails] and "planted failure" in first.failed[fails] and len(first.done) == 2
    assert sorted(second.skipped) == sorted(first.done) and second.done == [fails] and not second.failed
    skip = set(PROVENANCE) | set(TIMING_COLUMNS) | {"resumed_from"}  # the unpacked sweep resumed a killed cell
    a, b = (pl.read_parquet(w / "results/micro/cells.parquet").sort("bits", "mask") for w in (tmp_path, unpacked))
    assert a.height == b.height == 3 and [c for c in a.columns if c not in skip and not a[c].equals(b[c])] == []
    logs = "".join(p.read_text() for p in (tmp_path / "results/micro/logs/sweep").rglob("*_log.out"))
    assert logs.count("[warm ") == 3, logs[-2000:]  # forked from the job's warm process, not started afresh
    # the first sweep's pack ran two cells side by side: its second cell started before any had ended. Not
    # anchored to a line's start: the cells share the job's stdout, and print writes a line's end apart, so a
    # cell or the other thread may be mid-line when the pack prints.
    events = [re.findall(r"pack: \S+ (starts|ends)", p.read_text())
              for p in (tmp_path / "results/micro/logs/sweep").rglob("*_log.out")]
    packs = [e for e in events if len(e) == 6]
    assert len(packs) == 1, events
    pack = packs[0]
    assert pack[:3] == ["starts", "starts", "ends"], events


def test_a_pack_asks_for_its_cells_at_once_and_the_time_of_its_rounds():
    # 5 cells, 2 at once: 3 rounds; 2 cells' memory and CPUs, one cell's GPU; a retry doubles memory, adds time
    assert job_size(5, 2, 1, mem_gb=4, time_min=60, cpus=1, gpus=1) == \
        {"mem_gb": 8, "time_min": 180, "cpus": 2, "gpus": 1}
    assert job_size(5, 2, 2, mem_gb=4, time_min=60, cpus=2, gpus=1) == \
        {"mem_gb": 16, "time_min": 360, "cpus": 4, "gpus": 1}
    # more at once than cells: the cells there are; one at a time: one cell's memory, every cell's time
    assert job_size(3, 8, 1, mem_gb=4, time_min=60, cpus=1, gpus=0)["mem_gb"] == 12
    assert job_size(8, 1, 1, mem_gb=4, time_min=60, cpus=1, gpus=0) == \
        {"mem_gb": 4, "time_min": 480, "cpus": 1, "gpus": 0}
