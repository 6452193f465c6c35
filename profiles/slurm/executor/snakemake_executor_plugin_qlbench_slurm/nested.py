"""The snakemake a job of the profile runs: `python -m snakemake_executor_plugin_qlbench_slurm.nested --outputs B64
ARGS` starts `python -m snakemake ARGS`, the command snakemake spawned, but on a requeued job.

A job's snakemake gets its cells as `--target-jobs`, and Snakemake always runs a target job (it forces their
outputs, `--force` or not) after deleting what it had written. A job SLURM requeues (preemption, `scontrol
requeue`) starts the same command again with SLURM_RESTART_COUNT ≥ 1, so the cells of a pack that had finished
before the requeue lost their rows and ran again. `--outputs` carries each target's output files (base64 of a JSON
map, put there when the job was submitted); on a restart the targets whose outputs are all there are left out, and
a job with none left exits 0 at once. A first start runs snakemake's command unchanged.
"""

from __future__ import annotations

import base64
import json
import os
import sys

TARGETS = "--target-jobs"


def encode(outputs: dict[str, list[str]]) -> str:
    """The `--outputs` value: target spec (as on snakemake's command line) -> its output files."""
    return base64.b64encode(json.dumps(outputs, sort_keys=True).encode()).decode()


def restarted(environ) -> bool:
    count = environ.get("SLURM_RESTART_COUNT", "") or "0"
    return count.isdigit() and int(count) > 0


def args(argv: list[str], environ=os.environ, exists=os.path.exists) -> list[str] | None:
    """snakemake's arguments for this start of the job; None: every target finished before a requeue."""
    outputs = {}
    if argv[:1] == ["--outputs"]:
        outputs, argv = json.loads(base64.b64decode(argv[1])), argv[2:]
    if not (outputs and restarted(environ) and TARGETS in argv):
        return list(argv)
    start = argv.index(TARGETS) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    left = [t for t in argv[start:end] if not (outputs.get(t) and all(exists(f) for f in outputs[t]))]
    if not left:
        return None
    return argv[:start] + left + argv[end:]


def main() -> None:
    argv = args(sys.argv[1:])
    if argv is None:
        print("qlbench-slurm: requeued job: every cell of it finished before the requeue; nothing to run", flush=True)
        sys.exit(0)
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *argv])


if __name__ == "__main__":
    main()
