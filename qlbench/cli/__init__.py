"""The `qlbench` command. Thin: parse, call, exit with one clear line. Heavy imports happen inside commands.

The group and its shared options live in `group`; the commands in `cells` (run, prepare, masks, grid, status, sweep,
aggregate), `settings` (every setting, backend and task), `export` (export, track), `analyses` (analyze: every
declared analysis; bounds, sensitivity and plan with their options; findings, qalof-table, backends-table),
`robustness` and `adapt` (the loop that adds the cells the plan names)."""

from __future__ import annotations

from qlbench.cli.group import main  # noqa: F401  (the entry point)
from qlbench.cli import adapt, analyses, cells, export, robustness, settings  # noqa: E402,F401  (registers the commands)
