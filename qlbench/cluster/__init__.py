"""Running many cells: where a study stands (status), submitit sweeps (sweep), a SLURM job's time limit seen from
inside (timelimit), and planted trouble for the cluster tests (plant)."""
