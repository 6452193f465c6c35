"""Killing a command that drives snakemake (`qlbench adapt`): snakemake is asked to finish its jobs (SIGTERM), and one
that missed the ask (snakemake 9.27 can, when the signal comes while it selects jobs: cluster/drive.py) is
interrupted (SIGINT) instead of being waited on for ever. The stand-ins print what snakemake prints; the real
snakemake's miss is a race (a signal in the moment it selects jobs), so these pin the driver's side of it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qlbench.cluster import drive

# a stand-in for snakemake: it records each signal it gets; HEARS says whether it takes SIGTERM (prints snakemake's
# line and exits) or misses it (the deadlocked handler); SIGINT ends it either way
STAND_IN = textwrap.dedent("""
    import signal, sys, time
    got = open(sys.argv[1], "a")
    def term(signum, frame):
        got.write("TERM\\n"); got.flush()
        if sys.argv[2] == "hears":
            print("Will exit after finishing currently running jobs (scheduler).", flush=True)
            sys.exit(0)
    def interrupt(signum, frame):
        got.write("INT\\n"); got.flush(); sys.exit(130)
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, interrupt)
    print("Select jobs to execute...", flush=True)
    time.sleep(120)
""")

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from qlbench.cluster import drive
    cmd = [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]
    print("ready", flush=True)
    rc, stopped = drive.run(cmd, Path(sys.argv[4]), heard_s=float(sys.argv[5]))
    print(f"rc={rc} stopped={stopped}", flush=True)
""")


def drive_and_kill(tmp_path, hears: str, heard_s: float = 1.0):
    got, log = tmp_path / "signals.txt", tmp_path / "round.log"
    log.write_text("Will exit after finishing currently running jobs (scheduler).\n")  # an earlier, killed run's
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, STAND_IN, str(got), hears, str(log), str(heard_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    deadline = time.time() + 30
    while "Select jobs" not in log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out, got.read_text().split(), time.time() - t0


def test_a_snakemake_that_takes_the_sigterm_is_left_to_finish(tmp_path):
    out, got, _ = drive_and_kill(tmp_path, "hears")
    assert got == ["TERM"] and f"rc=0 stopped={int(signal.SIGTERM)}" in out


def test_a_snakemake_that_misses_the_sigterm_is_interrupted_not_waited_on(tmp_path):
    out, got, took = drive_and_kill(tmp_path, "misses")
    assert got == ["TERM", "INT"], got  # the earlier run's line in the log did not count as heard
    assert "did not take the SIGTERM within 1 s" in out and f"rc=130 stopped={int(signal.SIGTERM)}" in out
    assert took < 20


def test_its_exit_status_comes_back_when_nothing_stops_it(tmp_path):
    log = tmp_path / "round.log"
    rc, stopped = drive.run([sys.executable, "-c", "print('done'); raise SystemExit(3)"], log)
    assert (rc, stopped) == (3, None) and log.read_text() == "done\n"
