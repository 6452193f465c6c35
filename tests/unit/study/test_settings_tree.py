"""The settings tree is the one source of every setting: the schema the config is validated with, `qlbench settings`,
`qlbench run --help`, the defaults and the identity all agree with it — and building it moved no cell's identity."""

from __future__ import annotations

import dataclasses
import subprocess

import jsonschema
import pytest

from conftest import BIN, CONFIGS, full_config
from qlbench.study import config as studylib, grid, settings as tree_lib
from qlbench.study.identities import cell_identities

# identity hashes of cells made before the tree existed (flat settings): a finished result must stay current
PINNED = {
    ("demo", "tiny-gpt2/b16/r16/none/s0"): "8617355ddd3aefef",
    ("micro", "micro-gpt2/b16/r4/none/s0"): "21fd2ffcb85a3157",
    ("qalof", "tiny-gpt2/b4/r8/all/s0"): "6e9afb27e8a721b2",
    ("robustness", "tiny-gpt2/b16/r8/none/s0"): "dbc86e605969e32f",  # issue 22: stdlib-docs at 8+ words, new cells
    ("sensitivity", "tiny-gpt2/b4/r8/b0.attn.c_attn/s0"): "ee84647b090e3550",
    ("bounds", "dialogpt-medium/b16/r16/none/s0"): "d5dce16839430dae",
}


def test_every_setting_and_group_is_described():
    for spec in tree_lib.SPECS.values():
        assert len(spec.doc) > 10, f"{spec.key} has no description"
    for name, cls in tree_lib.GROUPS.items():
        assert cls.__doc__ and cls.__doc__.strip(), f"group {name} has no description"


def test_the_study_schema_holds_exactly_the_axes_and_the_trees_settings_each_described():
    study = studylib.schema()["$defs"]["study"]["properties"]
    assert set(study) == set(studylib.AXES) | set(tree_lib.SPECS)
    for key in tree_lib.SPECS:
        assert study[key]["description"] == tree_lib.SPECS[key].doc


@pytest.mark.parametrize("key", sorted(k for k, s in tree_lib.SPECS.items()
                                       if s.default not in (None, tree_lib.REQUIRED)))
def test_each_default_is_valid_under_its_own_schema(key):
    spec = tree_lib.SPECS[key]
    fragment = studylib.schema()["$defs"]["study"]["properties"][key]
    defs = studylib.schema()["$defs"]
    jsonschema.validate(tree_lib.thawed(spec.default), {**fragment, "$defs": defs})


def test_a_setting_without_a_description_fails_the_check(monkeypatch):
    broken = dataclasses.replace(tree_lib.SPECS["steps"], doc="")
    monkeypatch.setitem(tree_lib.SPECS, "steps", broken)
    with pytest.raises(AssertionError, match="steps has no description"):
        test_every_setting_and_group_is_described()


def test_the_tree_holds_each_studys_settings_frozen():
    config = full_config()  # every study, the study files' too
    typed = {"eval_scan": lambda v: tree_lib.Scan(**v), "robustness": tree_lib.robustness}  # mappings made typed
    for name in config["studies"]:
        st = studylib.load(config, name)
        for key, value in st.settings.items():
            assert tree_lib.thawed(st.tree.value(key)) == (value if key not in typed or value is None else
                                                           typed[key](value)), (name, key)
    st = studylib.load(config, "qalof")
    assert st.tree.precision.switch_bits == (4, 6, 8) and st.tree.precision.trains_switching
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.tree.train.steps = 1
    with pytest.raises(TypeError):
        st.tree.quant.layer_bits["b0"] = 4  # read-only all the way down


def test_identities_of_cells_made_before_the_tree_are_unchanged():
    config = studylib.read_config(CONFIGS)
    for (name, path), expected in PINNED.items():
        st = studylib.load(config, name)
        cells = grid.cells(st)
        found = dict(zip((c.path for c in cells), (h for _, h in cell_identities(st, cells))))
        assert found[path] == expected, (name, path)
        assert studylib.cell_identity(st, grid.parse(path))[1] == expected


def test_planted_trouble_is_outside_the_identity_by_type():
    st = studylib.load(studylib.read_config(CONFIGS), "micro")
    cell = grid.cells(st)[0]
    plain = studylib.cell_identity(st, cell)[1]
    assert studylib.cell_identity(st, cell, {**st.settings, "fail": "always"})[1] == plain
    assert studylib.cell_identity(st, cell, {**st.settings, "steps": 31})[1] != plain


def test_compiling_is_a_different_cell_and_off_is_the_cell_as_it_was():
    """torch.compile changes the arithmetic (fused kernels), so `compile` is in the identity; unset or `off`, no
    identity made before the setting existed moves (the pinned hashes above)."""
    st = studylib.load(studylib.read_config(CONFIGS), "micro")
    cell = grid.cells(st)[0]
    plain = studylib.cell_identity(st, cell)[1]
    assert "compile" not in st.settings and st.tree.runtime.compile == "off"
    assert studylib.cell_identity(st, cell, {**st.settings, "compile": "default"})[1] != plain
    assert studylib.cell_identity(st, cell, {**st.settings, "compile": "off"})[1] == plain


def test_qlbench_settings_and_run_help_list_every_setting():
    listed = subprocess.run([BIN / "qlbench", "settings"], capture_output=True, text=True, timeout=60)
    helped = subprocess.run([BIN / "qlbench", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and helped.returncode == 0
    for key, spec in tree_lib.SPECS.items():
        assert f"  {key} " in listed.stdout and spec.doc[:40] in listed.stdout.replace("\n", " "), key
        assert key in helped.stdout, key
    assert "fake" in listed.stdout and "bnb" in listed.stdout and "extractive_qa" in listed.stdout
