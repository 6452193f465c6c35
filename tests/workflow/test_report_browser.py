"""Snakemake's HTML report of the micro study, opened in a real browser (headless Chromium): every figure and table
the workflow declares with report() is listed under its category and opens in the report's viewer; a figure left
out of the report is caught."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, snakemake

pytestmark = pytest.mark.workflow
WALK = REPO / "tests/tools/report_walk.js"
DECLARED = re.compile(r'report\(\s*f"\{RESULTS\}/\{\{study\}\}/([^"]+)"')  # report(f"{RESULTS}/{{study}}/PATH", ...)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here when it is missing (as .ci/run does)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get)")
    return found


@pytest.fixture(scope="module")
def ran(tmp_path_factory, micro_resources) -> Path:
    work = tmp_path_factory.mktemp("micro-report")
    shutil.copytree(micro_resources, work / "resources")
    run = snakemake(work, "--cores", "2", "--config", "study=micro")
    assert run.returncode == 0, run.stdout[-3000:]
    return work


def declared(workflow: Path, results: Path) -> set[str]:
    """What the analyses' declarations and the workflow's other rules declare for the report, among the files this
    study's run made."""
    from qlbench import registry

    paths = {m for smk in (workflow / "rules").glob("*.smk") for m in DECLARED.findall(smk.read_text())}
    paths |= {a.outputs[key] for a in registry.analyses().values() for key in a.report}
    assert len(paths) >= 10, paths  # the declarations still name report items
    return {f"results/micro/{p}" for p in paths if (results / p).exists()}


def shown(chromium: str, report: Path) -> dict[str, str]:
    """Walk the report in the browser: {file listed: what its viewer showed (img:data:image/png..., iframe:...)}."""
    page = report.read_text()
    end = page.rindex("</body>")
    walked = report.with_name("walked.html")
    walked.write_text(page[:end] + f"<script>{WALK.read_text()}</script>" + page[end:])
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=120000",
                          "--dump-dom", walked.as_uri()], capture_output=True, text=True, timeout=300).stdout
    found = re.findall(r'<pre id="qlbench-walk">(\{.*?)</pre>', dom, re.S)
    assert found, "the walk left no result: the report did not render, or its menu changed"
    return {s["file"]: s["shown"] for s in json.loads(html.unescape(found[-1]))["seen"]}


def report(work: Path, snakefile: Path, out: Path) -> Path:
    cmd = [shutil.which("snakemake") or "snakemake", "--snakefile", str(snakefile), "--directory", str(work),
           "--configfile", *map(str, CONFIGS), "--config", "study=micro", "--report", str(out)]
    made = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    return out


def missing(want: set[str], seen: dict[str, str]) -> set[str]:
    viewer = {".png": "img:data:image/png", ".html": "iframe:data:text/html"}
    return {f for f in want if not seen.get(f, "").startswith(viewer.get(Path(f).suffix, "?"))}


def test_every_declared_figure_and_table_opens_in_a_browser(ran, chromium):
    want = declared(REPO / "workflow", ran / "results/micro")
    assert {"results/micro/figures/eval_loss_vs_bits.png", "results/micro/summary.html"} <= want
    seen = shown(chromium, report(ran, REPO / "Snakefile", ran / "report.html"))
    assert not missing(want, seen), (sorted(missing(want, seen)), seen)


def test_a_declared_figure_left_out_of_the_report_is_caught(ran, chromium, tmp_path):
    # the same workflow with one figure's report() taken away (its rule still makes the file)
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    rules = tmp_path / "workflow/rules/common.smk"
    text, n = re.subn(r"if key in analysis.report:",
                      'if key in analysis.report and rel != "figures/eval_loss_vs_bits.png":', rules.read_text())
    assert n == 1
    rules.write_text(text)
    seen = shown(chromium, report(ran, tmp_path / "Snakefile", ran / "report-without.html"))
    assert missing(declared(REPO / "workflow", ran / "results/micro"), seen) == {
        "results/micro/figures/eval_loss_vs_bits.png"}
