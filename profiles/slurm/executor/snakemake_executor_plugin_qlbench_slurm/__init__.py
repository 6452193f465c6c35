"""snakemake-executor-plugin-slurm, changed where a pack (a group job: several cells in one sbatch job) must let
its cells fail alone.

A pack's sbatch job runs a nested snakemake over its cells, one after another. Snakemake starts that run
  - without --keep-going, whatever the profile says (snakemake#2508): the first failing cell ended the pack and
    the cells after it never ran;
  - with every cell of the pack as a target, and targets always run (forced): a retried pack deleted and
    recomputed the cells that had finished on the earlier attempt.
Here the nested run keeps going, and a retry of a pack targets only its cells without a complete output: those
that finished keep their rows, the failed one is rerun alone. Settings are the slurm plugin's, named
`qlbench-slurm-*`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from snakemake_interface_executor_plugins.utils import encode_target_jobs_cli_args, format_cli_arg


@contextmanager
def _no_slurm_config():
    """Snakemake imports every installed executor plugin at every start, local runs included, and the slurm plugin
    runs `scontrol show config` while it is imported (for a help text's MinJobAge). Where SLURM's client is
    installed but no controller answers, that call waits 9-10 s on every `snakemake` command. While it is imported
    only, scontrol is pointed at an empty configuration and fails at once; at run time it asks the cluster."""
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = os.devnull
    try:
        yield
    finally:
        if before is None:
            del os.environ["SLURM_CONF"]
        else:
            os.environ["SLURM_CONF"] = before


with _no_slurm_config():  # snakemake imports plugins in name order: this one, and so the slurm plugin, first
    from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
    from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


class Executor(SlurmExecutor):
    def additional_general_args(self) -> str:
        return f"{super().additional_general_args()} --keep-going"

    def get_job_args(self, job, **kwargs) -> str:
        args = super().get_job_args(job, **kwargs)
        if not (job.is_group() and job.attempt > 1):
            return args
        unfinished = [j for j in job.jobs if not all(os.path.exists(f) for f in j.output)]
        if not unfinished or len(unfinished) == len(job.jobs):
            return args
        every = format_cli_arg("--target-jobs", encode_target_jobs_cli_args(job.get_target_spec()))
        if every not in args:  # the one place that ties this to snakemake's own spelling: fail loudly
            raise RuntimeError(f"qlbench-slurm: no `{every[:60]}...` in a pack's arguments; snakemake changed")
        remaining = [spec for j in unfinished for spec in j.get_target_spec()]
        self.logger.info(f"retrying pack {job.jobid} with its {len(unfinished)} of {len(job.jobs)} cells that did not "
                         "finish")
        return args.replace(every, format_cli_arg("--target-jobs", encode_target_jobs_cli_args(remaining)), 1)
