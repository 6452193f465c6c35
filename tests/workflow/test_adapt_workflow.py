"""`qlbench adapt` through the real snakemake on a micro study with a bounds grid: two rounds, the first killed
mid-round (SIGTERM to the process group) and rerun. No finished cell runs again, every round file reproduces its
round with plain `snakemake --configfile`, and the record and its report section are written. The micro cells
measure too little to decide a claim, so the loop follows a plan with planted verdicts
(tests/analyses/adapt/planted_plan.py): rank 2 for "c1" (4 cells, fewer cell-hours per verdict than a second seed's
8), then width 5 for "ratio" (3 cells), then all decided."""

import os
import signal
import subprocess
import time

import polars as pl
import pytest
import yaml

from qlbench import registry

from conftest import BIN, CONFIG_ARGS, CONFIGS, REPO, snakemake

pytestmark = pytest.mark.workflow
PLANTED = REPO / "tests/analyses/adapt"

# the micro model on a bounds grid (3 widths and 2 ranks with their 16-bit references): 8 cells, a plan to follow
STUDY = {"models": ["micro-gpt2"], "bits": [16, 4, 3, 2], "ranks": [4, 16], "masks": ["all"], "seeds": [0],
         "dataset": "chatterbot", "targets": ["c_attn"], "steps": 10, "batch_size": 8, "seq_len": 64}


def adapt(work, *args, **kwargs):
    cmd = [str(BIN / "qlbench"), "adapt", *map(str, CONFIG_ARGS), "-c", str(work / "adapt.yaml"), "adapt-micro",
           "--budget", "1", "--rounds", "2", "--plan", "planted_plan", *args, "--", "--cores", "2"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(cmd, cwd=work, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **kwargs)


def rows(work):
    """cell path -> its row's modification time (ns)."""
    root = work / "results/adapt-micro/cells"
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("row.parquet")}


def test_adapt_rounds_resume_after_a_kill_and_reproduce(workdir, monkeypatch):
    monkeypatch.setenv(registry.ANALYSES_ENV, str(PLANTED))  # for the plain snakemake runs too
    (workdir / "adapt.yaml").write_text(yaml.safe_dump({"studies": {"adapt-micro": STUDY}}))
    folder = workdir / "results/adapt-micro/adapt"
    first = adapt(workdir)
    # wait for round 1 to start its cells, then kill the loop, snakemake and the cells together
    deadline = time.time() + 900
    while time.time() < deadline and first.poll() is None:
        log = folder / "round-1.log"
        if log.exists() and "rule cell:" in log.read_text():
            break
        time.sleep(1)
    assert first.poll() is None, "adapt ended before round 1 started a cell:\n" + first.stdout.read()[-3000:]
    record = yaml.safe_load((folder / "round-1.yaml").read_text())
    os.killpg(first.pid, signal.SIGTERM)
    first.wait(timeout=120)
    before = rows(workdir)
    second = adapt(workdir)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    assert "continuing at round" in out and "stopped after round" in out, out[-3000:]

    after = rows(workdir)
    assert {p: after[p] for p in before} == before  # no finished cell ran again
    last = max(int(p.stem.split("-")[1]) for p in folder.glob("round-*.yaml"))
    assert last == 2 and yaml.safe_load((folder / "round-1.yaml").read_text()) == record
    assert record["studies"]["adapt-micro"]["ranks"] == [2, 4, 16]  # c1's 4 cells before ratio's 8
    assert yaml.safe_load((folder / "round-2.yaml").read_text())["studies"]["adapt-micro"]["bits"] == [16, 5, 4, 3, 2]
    stopped = (folder / "stopped.txt").read_text()
    assert stopped.startswith("adapt adapt-micro: stopped after round 2: every verdict is decided"), stopped
    # the last round's overlay defines every cell there is, each once
    cells = pl.read_parquet(workdir / "results/adapt-micro/cells.parquet")
    assert cells.height == len(after) == cells.select("bits", "rank", "seed", "mask").unique().height
    final = yaml.safe_load((folder / f"round-{last}.yaml").read_text())["studies"]["adapt-micro"]
    assert cells.height == len(final["ranks"]) * len(final["seeds"]) * len(final["bits"])
    # the record: every round's verdicts, the added cells' hours adding up
    rounds = pl.read_parquet(folder / "rounds.parquet")
    assert sorted(rounds["round"].unique()) == list(range(last + 1))
    added = rounds.group_by("round").agg(pl.col("cell_hours").first()).filter(pl.col("round") > 0)
    assert rounds["cumulative_cell_hours"].max() == pytest.approx(added["cell_hours"].sum())
    assert (folder / "rounds.png").stat().st_size > 0 and (folder / "stopped.txt").exists()
    # plain snakemake on each round's overlay has nothing left to do
    for k in range(last + 1):
        dry = snakemake(workdir, "-n", "--profile", REPO / "profiles/local", "--configfile", *CONFIGS,
                        workdir / "adapt.yaml", folder / f"round-{k}.yaml")
        assert "Nothing to be done" in dry.stdout, (k, dry.stdout[-2000:])
