"""N small cells one per process against the same cells packed (forked from one warm process): wall time and
cells per hour side by side, per-cell process time against training time, and whether the rows are the same.

    python bench/packs.py [--study micro] [--cells 12] [--parallel 2] [--resources DIR]

Both modes run the same `qlbench run` commands, `parallel` at a time, as the local profile does: "one per process"
with QLBENCH_WARM=0 (every cell imports torch & co. itself), "packed" with --warm and a warm process started
afresh for the run (its start-up is counted). The cells are the study's grid with more seeds, as many as asked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qlbench.results import PROVENANCE, TIMING_COLUMNS  # noqa: E402
from qlbench.study import config as studylib, grid  # noqa: E402


def cells_for(config: dict, name: str, n: int) -> list[grid.Cell]:
    study = config["studies"][name]
    per_seed = len(grid.cells(studylib.load(config, name))) // len(study["seeds"])
    study["seeds"] = list(range(-(-n // per_seed)))
    return grid.cells(studylib.load(config, name))[:n]


def run_all(work: Path, study: str, cells, parallel: int, env: dict, warm: bool) -> tuple[float, list[float]]:
    qlbench = str(Path(sys.executable).parent / "qlbench")

    def one(cell) -> float:
        out = work / "results" / ("packed" if warm else "fresh") / cell.path
        cmd = [qlbench, "run", *(["--warm"] if warm else []), "-c", "config.yaml", "--study", study,
               "--cell", cell.path, "--out", str(out)]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{cell.path} failed:\n{done.stderr[-2000:]}")
        return time.perf_counter() - t

    t = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        per_cell = list(pool.map(one, cells))
    return time.perf_counter() - t, per_cell


def rows(work: Path, mode: str, cells) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(work / "results" / mode / c.path / grid.ROW) for c in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="micro")
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2, help="cells at once (the local profile: cores)")
    parser.add_argument("--resources", type=Path, default=None, help="a resources/ folder with the base prepared")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qlbench-packs-"))
    config = studylib.with_studies(studylib.read_config([REPO / "config.yaml", REPO / "tests/config.yaml"]))
    cells = cells_for(config, args.study, args.cells)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "QLBENCH_WARM_DIR": str(work)}  # a warm process of this run's own, started (and timed) here
    model = cells[0].model
    if args.resources:
        shutil.copytree(args.resources, work / "resources")
    else:
        subprocess.run([str(Path(sys.executable).parent / "qlbench"), "prepare", "-c", "config.yaml", model],
                       cwd=work, env=env, check=True, capture_output=True)
    fresh_s, fresh_cell = run_all(work, args.study, cells, args.parallel, {**env, "QLBENCH_WARM": "0"}, False)
    packed_s, packed_cell = run_all(work, args.study, cells, args.parallel, env, True)
    a, b = rows(work, "fresh", cells), rows(work, "packed", cells)
    skip = set(PROVENANCE) | set(TIMING_COLUMNS)
    differ = [c for c in a.columns if c not in skip and not a[c].equals(b[c])]
    train_s = (b["step_time_s"] * b["steps_done"]).mean()
    print(f"{len(cells)} cells of {args.study} ({model}, {b['steps_done'][0]} steps), {args.parallel} at a time, "
          f"on {os.cpu_count()} CPUs")
    print(f"{'mode':<18} {'wall':>8} {'cells/hour':>11} {'per cell':>9} {'per cell / training':>20}")
    for mode, wall, per_cell in (("one per process", fresh_s, fresh_cell), ("packed (warm)", packed_s, packed_cell)):
        mean = sum(per_cell) / len(per_cell)
        print(f"{mode:<18} {wall:>6.1f} s {3600 * len(cells) / wall:>11.0f} {mean:>7.1f} s {mean / train_s:>19.2f}x")
    print(f"training per cell (steps x step time): {train_s:.1f} s; rows identical: {not differ}"
          + (f" (differ: {differ})" if differ else ""))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
