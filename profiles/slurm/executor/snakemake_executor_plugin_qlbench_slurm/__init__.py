"""snakemake-executor-plugin-slurm, changed where a pack (a group job: several cells in one sbatch job) must let
its cells fail alone.

A pack's sbatch job runs a nested snakemake over its cells. Snakemake starts that run
  - without --keep-going, whatever the profile says (snakemake#2508): the first failing cell ended the pack and
    the cells after it never ran;
  - with every cell of the pack as a target, and targets always run (forced): a retried pack deleted and
    recomputed the cells that had finished on the earlier attempt;
  - with the slurm-jobstep executor, which runs each cell as its own job step (`srun`): SLURM ends a step's
    processes with it, so the warm process a cell starts (`qlbench run --warm`) died with that cell and every cell
    paid the imports again.
Here the nested run keeps going, a retry of a pack targets only its cells without a complete output (those that
finished keep their rows, the failed one is rerun alone), and the cells run as plain children of the job's own
shell (snakemake's local executor), so they all fork from the one warm process the first started: as many at once
as the job was sized for (its `pack_slot`s, the profile's cells at once; they share the job's GPUs). A job with
one cell keeps its step. A job scancel ended is seen as CANCELLED (sacct's `CANCELLED by UID` hung the plugin),
and a job SLURM requeues (preemption) leaves out the cells that had finished before (nested.py): they keep their
rows. Settings are the slurm plugin's, named `qlbench-slurm-*`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from snakemake_interface_executor_plugins.utils import encode_target_jobs_cli_args, format_cli_arg

from snakemake_executor_plugin_qlbench_slurm import nested


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
    import snakemake_executor_plugin_slurm as _slurm
    from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
    from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings

_query_job_status = _slurm.query_job_status


async def query_job_status(command: str, logger):
    """The slurm plugin's status query, with each state's first word only. sacct says `CANCELLED by 0` for a job
    scancel ended; the plugin matches states whole, so it took such a job for one still running and waited for it
    for ever (the chaos test's first run hung until its time limit after each scancel)."""
    stati, seconds = await _query_job_status(command, logger)
    if stati is not None:
        stati = {job: state.split(" ", 1)[0] for job, state in stati.items()}
    return stati, seconds


_slurm.query_job_status = query_job_status  # the plugin calls it by this module-level name

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


JOBSTEP = "--executor slurm-jobstep --jobs 1"  # how the slurm plugin runs a job's nested snakemake
SNAKEMAKE = " -m snakemake "  # how snakemake starts a job's own snakemake
NESTED = " -m snakemake_executor_plugin_qlbench_slurm.nested "


def job_jobs(job) -> list:
    """The cell jobs of a job: a pack's, or the job itself."""
    return list(job.jobs) if job.is_group() else [job]


class Executor(SlurmExecutor):
    def additional_general_args(self) -> str:
        return f"{super().additional_general_args()} --keep-going"

    def format_job_exec(self, job) -> str:
        command = super().format_job_exec(job)
        if SNAKEMAKE not in command:  # snakemake's spelling changed: fail loudly
            raise RuntimeError(f"qlbench-slurm: no `{SNAKEMAKE}` in a job's command; snakemake changed")
        # a requeued job must not run its finished cells again (nested.py): each target's outputs go with it
        outputs = {t: [str(f) for f in j.output] for j in job_jobs(job)
                   for t in encode_target_jobs_cli_args(j.get_target_spec())}
        command = command.replace(SNAKEMAKE, f"{NESTED}--outputs {nested.encode(outputs)} ", 1)
        if not job.is_group():
            return command
        if JOBSTEP not in command:  # snakemake's or the slurm plugin's spelling changed: fail loudly
            raise RuntimeError(f"qlbench-slurm: no `{JOBSTEP}` in a pack's command; the slurm plugin changed")
        # the pack's cells need no step of their own: they run on what the job asked for, and outside steps they
        # share the job's one warm process. Snakemake sized the job for `pack_slot` cells at once (each cell takes
        # one; the profile gives a job as many as it runs at once); without pack_slots, for all its cells at once.
        at_once = job.resources.get("pack_slot") or len(job.jobs)
        return command.replace(JOBSTEP, f"--executor local --jobs {at_once}", 1)

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
