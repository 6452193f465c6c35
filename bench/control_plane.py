"""The control plane at scale: dry run, status and aggregation of a synthetic 10,000-cell study, against targets.

    python bench/control_plane.py [--seeds 21] [--keep DIR]

Builds, in a temporary folder, a config whose study `scale` is `each: module` (16 masks of tiny-gpt2) x 7 widths x
5 ranks x SEEDS seeds (10,185 cells at 21 seeds) and a results tree in which every cell has finished: real parquet
files (row with its curve, probe, layers, generations) written with the package's schemas, the row's `config_hash` the
cell's true identity, so status and aggregation do all their checks. Then times, each as the command a user types:
`snakemake -n` (every cell done: the aggregates are the only jobs), `qlbench status` (cold, then warm) and
`qlbench aggregate` (after status, then with nothing cached). Nothing here trains a model; the numbers are fake, the files and their count are real.
Each is printed with its wall time and its CPU time, and the load average before and after: on a machine other
jobs share, the wall time grows with their load and the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qlbench import results  # noqa: E402
from qlbench.study import config as studylib, finished, grid  # noqa: E402

TARGETS_S = {"snakemake -n": 20.0, "qlbench status": 1.0, "qlbench aggregate": 5.0}
TARGETS_100K_S = {"snakemake -n": 120.0, "snakemake -n (rows cached)": 120.0, "qlbench status": 5.0,
                  "qlbench aggregate": 10.0}  # ~100,000 cells (--seeds 206)
STEPS = 40


def build(work: Path, seeds: int) -> studylib.Study:
    config = studylib.with_studies(studylib.read_config([REPO / "config.yaml"]))  # with studies/
    config["studies"] = {"scale": {**config["studies"]["demo"], "bits": [16, 8, 6, 5, 4, 3, 2],
                                   "ranks": [4, 8, 16, 32, 64], "masks": [{"each": "module"}],
                                   "seeds": list(range(seeds))}}
    config["study"] = "scale"
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    st = studylib.load(config, "scale")
    base = work / "resources/models/tiny-gpt2"  # the prepared base the cells depend on: older than every cell
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}\n")
    write_cells(work / "results", st)
    return st


def write_cells(root: Path, st: studylib.Study) -> None:
    """One finished folder per cell; the parquet files are slices of one frame each, so writing 60,000 files takes
    seconds, and the files nobody reads whole here (adapter, layers, generations) are hard links to one file."""
    cells = grid.cells(st)
    coords = pl.DataFrame([{"study": st.name, **c.coords(), "targets": "c_attn"} for c in cells],
                          schema={k: results.COORDS[k] for k in results.COORDS})
    identities = [studylib.cell_identity(st, c) for c in cells]
    n = len(cells)

    row = pl.DataFrame({k: pl.Series(k, [0] * n).cast(t) for k, t in {**results.METRICS, **results.PROVENANCE}.items()}).with_columns(
        pl.lit("ok").alias("status"), pl.Series("config_hash", [h for _, h in identities]),
        (2.2 + pl.int_range(n) / n).alias("eval_loss"), pl.lit(STEPS).cast(pl.Int64).alias("steps_done"),
        pl.lit(results.NUMERICS).cast(pl.Int64).alias("numerics"))  # made by this code: current, not stale
    fixed = {k: st.settings[k] for k in ("dataset", "format", "backend", "high_bits", "adapter_bits", "act_bits",
                                         "kv_bits", "steps", "lr", "batch_size", "seq_len")}
    rows = pl.concat([coords.drop("targets"), row], how="horizontal").with_columns(
        *(pl.lit(v).cast(results.SETTINGS[k]).alias(k) for k, v in fixed.items()),
        targets=pl.lit("c_attn"), lora_alpha=2.0 * pl.col("rank"),
        settings_json=pl.Series([json.dumps(i, sort_keys=True, default=str) for i, _ in identities]))
    steps = pl.DataFrame({"step": range(1, STEPS + 1), "loss": [3.0 - 0.01 * s for s in range(STEPS)]}).with_columns(
        lr=pl.lit(2e-3), grad_norm=pl.lit(1.0), step_time_s=pl.lit(0.1), grad_var=pl.lit(float("nan")))
    curve = pl.Series(results.CURVE, [steps.to_dicts()] * n, dtype=results.CURVE_DTYPE)  # the row carries its curve
    rows = rows.select([c for c in results.ROW_SCHEMA if c in rows.columns]).with_columns(curve)
    empty_probe = results.probe_frame({"study": st.name, **cells[0].coords(), "targets": "c_attn"}, [])
    for i, cell in enumerate(cells):
        shared = root / f"shared{i // 60_000}"  # ext4 allows 65,000 links to a file
        if not shared.exists():
            shared.mkdir(parents=True)
            for name in (grid.ADAPTER, grid.LAYERS, grid.GENERATIONS):
                (shared / name).write_bytes(b"x" * 1024)
        d = Path(grid.cell_dir(str(root), st.name, cell))
        if (d / grid.ROW).exists():  # a build that stopped part-way goes on where it stopped
            continue
        d.mkdir(parents=True, exist_ok=True)
        for name in (grid.ADAPTER, grid.LAYERS, grid.GENERATIONS):
            if not (d / name).exists():
                os.link(shared / name, d / name)
        empty_probe.write_parquet(d / grid.PROBE)
        (d / grid.LOG).write_text(f"00:00:00 cell {st.name}/{cell.path}\n")
        rows.slice(i, 1).write_parquet(d / grid.ROW)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the command and its children, output): on a shared machine the CPU time is
    the steadier figure (the wall time grows with the other jobs' load)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}")
    return elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=21, help="seeds per configuration (21: 10,185 cells)")
    parser.add_argument("--keep", type=Path, default=None, help="build the tree here and keep it (a folder built before is measured again)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qlbench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if (work / "config.yaml").exists():  # a tree kept from an earlier run: measure it again
        st = studylib.load(yaml.safe_load((work / "config.yaml").read_text()), "scale")
        write_cells(work / "results", st)  # any cell a stopped build did not write
        shutil.rmtree(work / "results/scale" / finished.CACHE, ignore_errors=True)
        print(f"{len(grid.cells(st))} finished cells under {work}/results (kept)")
    else:
        st = build(work, args.seeds)
        print(f"{len(grid.cells(st))} finished cells written under {work}/results in {time.perf_counter() - t:.0f} s")
    bin_ = Path(sys.executable).parent
    qlb = [str(bin_ / "qlbench")]
    dry_run = [str(bin_ / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "-n",
               "--quiet", "rules"]
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    measured = {}  # name -> (wall s, CPU s)

    def measure(name, cmd):
        wall, cpu, out = timed(cmd, work)
        measured[name] = wall, cpu
        return out

    measure("snakemake -n", dry_run)  # reads every row once (is it readable?) and caches them
    shutil.rmtree(work / "results/scale" / finished.CACHE, ignore_errors=True)
    measure("qlbench status (cold)", qlb + ["status"])
    print(measure("qlbench status", qlb + ["status"]).splitlines()[0])
    measure("snakemake -n (rows cached)", dry_run)
    print(measure("qlbench aggregate", qlb + ["aggregate"]).strip())  # rows (and their curves) cached by status
    shutil.rmtree(work / "results/scale" / finished.CACHE)
    measure("qlbench aggregate (nothing cached)", qlb + ["aggregate"])
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    print(f"{'command':<36} {'wall':>9} {'CPU':>9} {'target (wall)':>14}")
    targets = TARGETS_100K_S if len(grid.cells(st)) > 50_000 else TARGETS_S
    for name, (wall, cpu) in measured.items():
        target = targets.get(name)
        mark = "" if target is None else f"{'<=' if wall <= target else '> '} {target:>4.0f} s"
        print(f"{name:<36} {wall:>7.2f} s {cpu:>7.2f} s {mark:>14}")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
