"""One home per fact: a backend's widths, bytes per parameter and quantizer names live in its declaration
(qlbench/quant/<backend>.py) — the schema, the CLI's help, the checks, the tables and the exports read the registry,
and no other file spells them; the `auto` dtype rule and the robustness and GBDA defaults live in the settings tree."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import BIN, REPO, full_config
from qlbench import registry
from qlbench.study import config as studylib, settings as tree_lib

# where widths could be spelled: the package, the workflow and its schema, the docs a user reads to pick a backend
SCANNED = sorted([*(REPO / "qlbench").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"),
                  *(REPO / "workflow").rglob("*.yaml"), REPO / "Snakefile", REPO / "README.md",
                  *(REPO / "docs").glob("*.md")])


def spellings(widths) -> list[re.Pattern]:
    """The ways a file spells a set of widths: a tuple, list or set literal, and for a run of three or more
    `range(a, b + 1)`, `a-b` and a schema's `minimum: a ... maximum: b`."""
    ws = sorted(widths)
    out = [re.compile(r"[(\[{]\s*" + r"\s*,\s*".join(map(str, ws)) + r"\s*,?\s*[)\]}]")]
    if len(ws) > 2 and ws == list(range(ws[0], ws[-1] + 1)):
        out += [re.compile(rf"range\(\s*{ws[0]}\s*,\s*{ws[-1] + 1}\s*\)"),
                re.compile(rf"(?<![\w.\-–]){ws[0]}\s?[-–]\s?{ws[-1]}(?![\w.\-–])"),
                re.compile(rf"minimum\W+{ws[0]}\W+maximum\W+{ws[-1]}\b")]
    return out


def width_sets() -> dict[tuple[int, ...], set[Path]]:
    """Every set of two or more widths a backend declares (a format's, or all of its own), and the sets the
    registry derives (every backend's, the simulated ones) -> the files allowed to spell it: its declarations'."""
    homes: dict[tuple[int, ...], set[Path]] = {registry.widths(): set(), registry.simulated_widths(): set()}
    for b in registry.backends().values():
        own = {tuple(sorted(w)) for w in b.widths.values()} | {tuple(sorted({x for w in b.widths.values() for x in w}))}
        for ws in own:
            homes.setdefault(ws, set())
            homes[ws].add(Path(b.source).resolve())
    return {ws: files for ws, files in homes.items() if len(ws) > 1}


def stray_widths(files, root: Path = REPO) -> list[str]:
    found = []
    for ws, homes in width_sets().items():
        for path in files:
            if path.resolve() in homes:
                continue
            text = path.read_text()
            for pattern in spellings(ws):
                for m in pattern.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    found.append(f"{path.relative_to(root)}:{line}: {m.group(0)!r} (widths {ws})")
    return found


def test_each_backends_widths_are_spelled_in_its_own_file_only():
    assert not stray_widths(SCANNED)


def test_the_scan_finds_a_backends_widths_spelled_elsewhere(tmp_path):
    (tmp_path / "qlbench").mkdir()
    planted = [tmp_path / "qlbench" / n for n in ("a.py", "b.py", "c.yaml", "d.py")]
    planted[0].write_text('WIDTHS = range(2, 9)  # as the fake backend\n')
    planted[1].write_text('HQQ = (1, 2, 3, 4, 8)\n')
    planted[2].write_text('bits: {type: integer, minimum: 1, maximum: 8}\n')
    planted[3].write_text('help="a width: 2-8, or 16"\nNOT_WIDTHS = (2, 3, 4, 8)  # a choice of widths, no backend\'s\n')
    found = stray_widths(planted, tmp_path)
    assert len(found) == 4 and all(any(p.name in f for f in found) for p in planted), found


# a backend of a test's own, with a width no other backend has (11) and a declared bytes count and name
WIDE = textwrap.dedent('''
    from qlbench.registry import Backend

    BACKEND = Backend(name="wide", summary="a test's backend with a width of its own", widths={"int": (3, 11)},
                      bytes_per_param="blockwise", row_scaled=(11,), names={3: "wide3"})
''')


@pytest.fixture
def wide(tmp_path, monkeypatch):
    folder = tmp_path / "backends"
    folder.mkdir()
    (folder / "wide.py").write_text(WIDE)
    monkeypatch.setenv(registry.BACKENDS_ENV, str(folder))
    return folder


def study_config(**study) -> dict:
    config = full_config()
    config["studies"]["micro"].update(study)
    return config


def test_a_width_added_to_a_declaration_is_one_the_schema_the_checks_and_the_help_accept(wide):
    assert 11 in studylib.schema()["$defs"]["axis_bits"]["enum"]
    st = studylib.load(study_config(bits=[11, 16], backend="wide"), "micro")
    assert st.bits == [16, 11]
    from qlbench.cell.context import check_cell
    from qlbench.study.grid import Cell

    check_cell(st, Cell("micro-gpt2", 11, 4, "all", 0))  # no error: a width some backend declares
    with pytest.raises(Exception, match=r"backend 'fake' cannot quantize 'int' at 11 bits"):
        studylib.load(study_config(bits=[11, 16], backend="fake"), "micro")
    helped = subprocess.run([BIN / "qlbench", "run", "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, registry.BACKENDS_ENV: str(wide)})
    assert "1, 2, 3, 4, 5, 6, 7, 8, 11 (as the backend allows)" in " ".join(helped.stdout.split()), helped.stdout


def test_without_the_declaration_the_width_is_refused_everywhere(monkeypatch):
    monkeypatch.delenv(registry.BACKENDS_ENV, raising=False)
    assert 11 not in studylib.schema()["$defs"]["axis_bits"]["enum"]
    with pytest.raises(Exception, match=r"config studies\.micro\.bits\.0: 11 bits is not a supported width "
                                        r"\(use 1-8 or 16\)"):
        studylib.load(study_config(bits=[11, 16]), "micro")
    from qlbench.cell.context import check_cell
    from qlbench.errors import QlbenchError
    from qlbench.study.grid import Cell

    st = studylib.load(study_config(), "micro")
    with pytest.raises(QlbenchError, match=r"^11 bits is not a supported width \(use 1-8 or 16\)$"):
        check_cell(st, Cell("micro-gpt2", 11, 4, "all", 0))


def test_bytes_per_parameter_and_quantizer_names_come_from_the_declaration(wide):
    from qlbench.analysis import backends, efficiency

    assert efficiency.bytes_per_quantized_param(3, "nf", "wide", 64, False) == 3 / 8 + 4 / 64  # blockwise
    assert efficiency.bytes_per_quantized_param(11, "nf", "wide", 64, False) is None  # row_scaled
    assert efficiency.bytes_per_quantized_param(4, "nf", "hqq", 64, False) is None  # its own layout
    assert efficiency.bytes_per_quantized_param(4, "nf", "bnb", 64, False) == 4 / 8 + 4 / 64
    assert efficiency.bytes_per_quantized_param(8, "int", "bnb", None, False) is None  # LLM.int8: per row
    assert backends.quantizer("wide", "int", 3) == "wide3" and backends.quantizer("wide", "int", 11) == "int11"
    assert backends.quantizer("bnb", "int", 8) == "LLM.int8" and backends.quantizer("bnb", "nf", 4) == "NF4"


def test_the_auto_dtype_rule_has_one_home(monkeypatch):
    import torch

    from qlbench.analysis import efficiency
    from qlbench.cell.load import base_dtype

    auto = '{"base_dtype": "auto"}'
    assert base_dtype("auto", torch.device("cpu")) == torch.float32
    assert efficiency.base_dtype(auto, "cpu (2 threads)") == "float32"
    assert base_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert efficiency.base_dtype(auto, "NVIDIA H100 80GB HBM3") == "bfloat16"
    monkeypatch.setitem(tree_lib.AUTO_BASE_DTYPE, "gpu", "float16")  # the rule changed in its home: both follow
    assert base_dtype("auto", torch.device("cuda")) == torch.float16
    assert efficiency.base_dtype(auto, "NVIDIA H100 80GB HBM3") == "float16"


def test_robustness_defaults_are_the_trees_and_a_study_leaves_out_what_it_does_not_change():
    from qlbench.attack import gbda, robustness

    assert gbda.GBDASettings is tree_lib.Attack
    st = studylib.load(full_config(), "robustness-agnews")
    given = st.settings["robustness"]
    typed = st.tree.data.robustness
    assert typed.examples == given["examples"] == 1000
    assert typed.attacked == tree_lib.Robustness().attacked and typed.attack == tree_lib.Attack()
    assert robustness.options(st.tree) is typed
    assert robustness.options(tree_lib.tree()) == tree_lib.Robustness()  # no `robustness:`: every default
    described = studylib.schema()["$defs"]["robustness"]["properties"]
    assert described["examples"]["description"].endswith(f"(default {tree_lib.Robustness().examples})")
    assert described["attacked"]["description"].endswith("(default fp32, fake8, fake4, random)")
    assert studylib.schema()["$defs"]["attack"]["properties"]["steps"]["description"].endswith("(default 100)")
