"""`python -m qlbench.cli`: the same command."""

from qlbench.cli import main

main()
