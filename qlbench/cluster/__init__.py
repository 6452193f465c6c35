"""Running many cells: where a study stands (status), submitit sweeps (sweep), the retry/memory/pack policy both
drivers read (policy), what a driver lends the cell it runs (runner: lock, progress, a SLURM job's time limit seen
from inside (timelimit), planted trouble for the cluster tests (plant))."""
