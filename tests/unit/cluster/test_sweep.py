"""`qlbench.sweep` with submitit's local executor: the grid's tree, a dead job reported (not waited on), resumption,
finished cells skipped; the retry, memory, time and pack policy it reads from the same profile Snakemake does. The
SLURM executor is tested in tests/cluster/."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
import yaml

import qlbench
from qlbench.cluster import policy
from qlbench.cluster.policy import Policy
from qlbench.errors import QlbenchError
from qlbench.study import config as study, grid

from conftest import CONFIGS, REPO, snakemake

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
    pol = Policy(retries=1, mem_mb="4000 * 2 ** (attempt - 1)", runtime="60 * attempt", cpus=1, cells_per_job=8,
                 cells_at_once=1, source="test")
    assert pol.job_size(5, 2, 1, cpus=1, gpus=1) == {"mem_gb": 8, "time_min": 180, "cpus": 2, "gpus": 1}
    assert pol.job_size(5, 2, 2, cpus=2, gpus=1) == {"mem_gb": 16, "time_min": 360, "cpus": 4, "gpus": 1}
    # more at once than cells: the cells there are; one at a time: one cell's memory, every cell's time
    assert pol.job_size(3, 8, 1, cpus=1, gpus=0)["mem_gb"] == 12
    assert pol.job_size(8, 1, 1, cpus=1, gpus=0) == {"mem_gb": 4, "time_min": 480, "cpus": 1, "gpus": 0}
    # another first attempt (--mem-gb 3, --time-min 30), the same growth
    assert pol.starting_at(3000, 30).job_size(1, 1, 3, cpus=1, gpus=0) == \
        {"mem_gb": 12, "time_min": 90, "cpus": 1, "gpus": 0}


def changed_profile(folder: Path) -> Path:
    """A copy of the SLURM profile with every number of the policy changed."""
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    for old, new in (("retries: 2", "retries: 4"), ("[pack=8]", "[pack=2]"), ("[pack_slot=1]", "[pack_slot=2]"),
                     ("mem_mb: 4000 * 2 ** (attempt - 1)", "mem_mb: 3000 * 3 ** (attempt - 1)"),
                     ("    runtime: 60 * attempt\n    cpus_per_task: 1",
                      "    runtime: 45 * attempt\n    cpus_per_task: 1")):
        assert text.count(old) == 1, old  # the profile moved: this test must change with it
        text = text.replace(old, new)
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    return folder


def test_snakemake_and_the_sweep_read_one_policy_from_the_profile(tmp_path, micro_resources):
    from snakemake.resources import Resource

    from qlbench.cluster import sweep as sweeplib

    profile = changed_profile(tmp_path / "profile")
    pol = policy.read(profile)
    assert (pol.retries, pol.cells_per_job, pol.cells_at_once) == (4, 2, 2)
    # Snakemake: the cell jobs of a dry run under the changed profile, and its own evaluator for later attempts
    # (retries and the pack are its command-line options `retries`, `group-components` and `resources`, the keys
    # read above; a dry run prints no retries, and its group listing varies from run to run)
    dry = snakemake(tmp_path, "-n", "--profile", profile, "--config", "study=micro")
    assert dry.returncode == 0, dry.stdout[-2000:]
    cells = re.findall(r"resources: .*\bmem_mb=(\d+),.*\bruntime=(\d+), cpus_per_task=1, pack_slot=1", dry.stdout)
    assert cells and set(cells) == {("3000", "45")}, dry.stdout[-3000:]
    cell = yaml.safe_load((profile / "config.yaml").read_text())["set-resources"]["cell"]
    for name, ours in (("mem_mb", pol.mem_mb_at), ("runtime", pol.runtime_min_at)):
        theirs = Resource.from_cli_expression(name, str(cell[name]))
        assert [theirs.evaluate(wildcards={}, input=[], attempt=a, threads=1, rulename="cell", async_run=None).value
                for a in (1, 2, 3)] == [ours(a) for a in (1, 2, 3)]
    assert [pol.mem_mb_at(a) for a in (1, 2, 3)] == [3000, 9000, 27000]
    # the sweep: what it asks SLURM for, attempt by attempt (submitit replaced by a recorder; no cell runs)
    asked = []

    class Recorder:
        def __init__(self, kind, logs, name, partition, account, parallel, **size):
            self.size = size

        def run(self, commands, poll_s):
            asked.append({**self.size, "jobs": [len(getattr(c, "commands", [c])) for c in commands]})
            return [type("Handle", (), {"job_id": str(i)})() for i in range(len(commands))]

        def wait(self, handles, poll_s):
            return ["FAILED"] * len(handles)

    (tmp_path / "resources").symlink_to(micro_resources)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setattr(sweeplib, "_Submitter", Recorder)
        outcome = qlbench.sweep("micro", config_files=[*map(str, CONFIGS)], profile=str(profile),
                                aggregate=False, poll_s=0, echo=lambda line: None)
    assert len(outcome.failed) == 3
    assert asked == [{"mem_gb": 3 * 3 ** (a - 1) * 2, "time_min": 45 * a, "cpus": 2, "gpus": 0, "jobs": [2, 1]}
                     for a in range(1, 6)]  # 4 retries; packs of 2 cells, both at once


def test_a_missing_profile_is_one_line(tmp_path):
    with pytest.raises(QlbenchError, match="no Snakemake profile at .*nowhere"):
        policy.read(tmp_path / "nowhere")
