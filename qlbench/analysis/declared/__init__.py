"""One file per analysis the workflow runs on a study: `ANALYSIS = Analysis(...)` (qlbench/registry.py reads it
without importing the file) and `run(job) -> str`, which reads `job.inputs` and writes `job.outputs`."""
