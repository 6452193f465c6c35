"""Analyses declare themselves (qlbench/registry.py's Analysis): a file of its own on QLBENCH_ANALYSES
(tests/analyses/cell_count.py) is a rule of the workflow, a final target, a report item and a `qlbench analyze`
command, with no other file touched; when a study gets each of qlbench's own analyses; the mask grammar's one home."""

import os
import subprocess
import sys

import polars as pl
import pytest

from qlbench import registry
from qlbench.analysis import applies
from qlbench.study import config as study, masks

from conftest import BIN, CONFIG_ARGS, REPO, job_counts, snakemake

FIXTURES = REPO / "tests/analyses"


@pytest.fixture
def own(monkeypatch):
    monkeypatch.setenv(registry.ANALYSES_ENV, str(FIXTURES))
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def test_a_file_of_ones_own_is_read_from_its_source_without_importing_polars(own):
    found = registry.analyses()
    assert found["cell_count"].outputs == {"table": "cell_count/cells_per_bits.md",
                                           "html": "cell_count/cells_per_bits.html"}
    assert found["cell_count"].source == str(FIXTURES / "cell_count.py")
    assert {"summarize", "bounds", "sensitivity", "validate_recommendation"} <= set(found)
    code = "import sys; from qlbench import registry; registry.analyses(); print(sorted(set(sys.modules) & {'polars', 'torch'}))"
    out = subprocess.run([sys.executable, "-c", code], env=own, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_lists_it_and_runs_it_on_a_study(own, tmp_path):
    helped = subprocess.run([BIN / "qlbench", "analyze", "--help"], env=own, capture_output=True, text=True)
    assert "cell_count: how many cells each bit width has" in helped.stdout, helped.stdout
    folder = tmp_path / "micro"
    folder.mkdir()
    pl.DataFrame({"study": ["micro"] * 5, "bits": [16, 4, 4, 2, 4]}).write_parquet(folder / "cells.parquet")
    ran = subprocess.run([BIN / "qlbench", "analyze", "cell_count", *CONFIG_ARGS, "micro",
                          "--results", tmp_path], env=own, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "2 bits: 1, 4 bits: 3, 16 bits: 1"
    assert "| 4 | 3 |" in (folder / "cell_count/cells_per_bits.md").read_text()
    assert (folder / "cell_count/cells_per_bits.html").exists()


def test_an_unknown_need_is_one_line_before_any_job(tmp_path, monkeypatch):
    (tmp_path / "broken.py").write_text(
        'ANALYSIS = Analysis(name="broken", summary="", needs=["cells", "bounds.nothing"], outputs={"x": "x.md"})\n')
    monkeypatch.setenv(registry.ANALYSES_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="need 'bounds.nothing' is none of cells, curves, probes"):
        registry.analyses()
    dry = snakemake(tmp_path, "-n", "--config", "study=micro")
    assert dry.returncode != 0 and "qlbench: " in dry.stdout and "Traceback" not in dry.stdout, dry.stdout[-2000:]


def test_the_dry_run_has_its_rule_and_its_outputs_among_the_final_targets(own, tmp_path):
    dry = snakemake(tmp_path, "-n", "--config", "study=micro")
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert job_counts(dry.stdout)["cell_count"] == 1
    targets = dry.stdout[dry.stdout.index("rule all:"):].split("\n")[1]  # `    input: ...`: final_targets()
    assert "results/micro/cell_count/cells_per_bits.html" in targets.split(", "), targets


@pytest.mark.parametrize("name, rule", [("demo", {"bounds", "plan", "similarity", "qlora_figure"}),
                                        ("sensitivity", {"sensitivity", "validate_recommendation"}),
                                        ("micro", {"sensitivity", "validate_recommendation", "similarity",
                                                   "qlora_figure"})])
def test_each_study_gets_the_analyses_its_grid_has_what_they_need_for(repo_config, name, rule, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/: an analysis of a record (adapt_rounds) applies only where one exists
    st = study.load(repo_config, name)
    got = {a.name for a in registry.analyses().values() if applies.applies(a.applies, st)}
    assert got == rule | {"summarize"}


def test_the_mask_grammar_names_single_blocks_and_modules():
    assert [masks.single_block_or_module(m) for m in ("b3", "b10.attn.c_proj", "b0.mlp", "b0-3", "b1+b2", "all",
                                                        "none", "attn", "b3.")] == [
        "block", "module", "module", "", "", "", "", "", ""]


@pytest.mark.workflow
def test_the_run_makes_its_outputs_and_the_report_shows_them_under_its_category(own, workdir):
    run = snakemake(workdir, "--cores", "2", "--config", "study=micro")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "| 16 | 1 |" in (workdir / "results/micro/cell_count/cells_per_bits.md").read_text()
    made = snakemake(workdir, "--config", "study=micro", "--report", workdir / "report.html")
    assert made.returncode == 0, made.stdout[-3000:]
    page = (workdir / "report.html").read_text()
    # the category and the caption come from the fixture's declaration alone; qlbench's own are there too
    for text in ("Fixture counts", "counted from cells.parquet by the fixture", "cells_per_bits.html", "Sensitivity",
                 "Eval loss after LoRA per configuration"):
        assert text in page, text


def test_an_unknown_condition_is_one_line_before_any_job(tmp_path, monkeypatch):
    (tmp_path / "odd.py").write_text(
        'ANALYSIS = Analysis(name="odd", summary="", needs=["cells"], applies="sometimes", outputs={"x": "x.md"})\n')
    monkeypatch.setenv(registry.ANALYSES_ENV, str(tmp_path))
    dry = snakemake(tmp_path, "-n", "--config", "study=micro")
    assert dry.returncode != 0 and "qlbench: applies='sometimes': no such condition" in dry.stdout, dry.stdout[-2000:]
    assert "Traceback" not in dry.stdout
