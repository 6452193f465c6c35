#!/usr/bin/env bash
# Re-make the locks from pyproject.toml's ranges (resolution only: nothing is downloaded but package metadata).
#   cpu.txt:  torch's CPU build (2.13.0+cpu: /opt/wheels on the test machines, https://download.pytorch.org/whl/cpu
#             elsewhere) -- what .ci/run installs
#   cuda.txt: torch from PyPI's default build (CUDA 13 on Linux x86_64), with the NVIDIA libraries it pulls
# torch's release is pinned in requirements/torch.in. Python 3.11 on Linux x86_64; for another Python: PY=3.12
# requirements/compile.sh (needs `pip install uv`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.11}
common=(pyproject.toml profiles/slurm/executor/pyproject.toml --extra test --extra docs -c requirements/torch.in
        --python-version "$PY" --python-platform x86_64-manylinux_2_28 --annotation-style line --quiet
        --custom-compile-command "requirements/compile.sh")
cpu_index=(--find-links /opt/wheels)
[ -d /opt/wheels ] || cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
uv pip compile "${common[@]}" "${cpu_index[@]}" -o requirements/cpu.txt
uv pip compile "${common[@]}" -o requirements/cuda.txt
