"""The studies a user reads: one file per family under studies/, read in by `load` (so Snakemake and every cell see
the same), the tests' own fixtures apart in tests/config.yaml, and no study restating a default."""

from __future__ import annotations

import pytest
import yaml

from conftest import CONFIGS, REPO, snakemake
from qlbench.errors import QlbenchError
from qlbench.study import config as studylib, settings as settings_tree

STUDY_FILES = sorted((REPO / "studies").glob("*.yaml"))
MERGE = "tag:yaml.org,2002:merge"


def restated_defaults(text: str, studies_at_top: bool) -> list[str]:
    """`study.key` for each setting a study writes at its default; a study that inherits (`<<: *other`) may write a
    default to override the other's value."""
    loader = yaml.SafeLoader(text)
    root = loader.get_single_node()
    studies = root if studies_at_top else dict((k.value, v) for k, v in root.value).get("studies")
    found = []
    for name, study in studies.value if studies else []:
        inherited = {}
        for key, value in study.value:
            if key.tag == MERGE:
                inherited = loader.construct_object(value, deep=True)
        for key, value in study.value:
            spec = settings_tree.SPECS.get(key.value)
            if key.tag == MERGE or spec is None or spec.default is settings_tree.REQUIRED:
                continue
            default = settings_tree.thawed(spec.default)
            read = lambda v: studylib.read_off({key.value: studylib.as_number(key.value, v)})[key.value]  # noqa: E731
            if read(loader.construct_object(value, deep=True)) == default == read(inherited.get(key.value, default)):
                found.append(f"{name.value}.{key.value}")
    return found


def test_the_user_studies_are_in_family_files_and_the_tests_fixtures_apart():
    user = studylib.with_studies(studylib.read_config([REPO / "config.yaml"]))
    assert len(STUDY_FILES) >= 5 and "studies" not in yaml.safe_load((REPO / "config.yaml").read_text())
    assert {"demo", "sensitivity", "qalof", "robustness", "backends-bnb"} <= set(user["studies"])
    assert "micro" not in user["studies"] and "micro-gpt2" not in user["models"]
    both = studylib.with_studies(studylib.read_config(CONFIGS))
    assert set(both["studies"]) == set(user["studies"]) | {"micro"} and "micro-gpt2" in both["models"]


@pytest.mark.parametrize("path", STUDY_FILES + CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_study_restates_a_default(path):
    assert restated_defaults(path.read_text(), studies_at_top=path.parent.name == "studies") == []


def test_the_check_finds_a_restated_default_and_leaves_an_override_of_an_inherited_value():
    text = ("a: &a {steps: 40, lr: 1e-3, compile: off, eval_bits: [8]}\n"
            "b: {<<: *a, eval_bits: [], lr: 2.0e-3, steps: 40}\n")
    # b's eval_bits and lr override a's; its steps restate what a restates
    assert restated_defaults(text, studies_at_top=True) == ["a.steps", "a.compile", "b.steps"]


def test_a_config_files_study_wins_key_by_key_and_the_files_are_read_wherever_the_command_runs(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative patterns are read from the checkout, not the working directory
    mine = {"study_files": ["studies/demo.yaml"], "studies": {"demo": {"ranks": [8], "steps": 7}}}
    merged = studylib.with_studies({**studylib.read_config([REPO / "config.yaml"]), **mine})
    assert list(merged["studies"]) == ["demo", "demo-compile"] and "study_files" not in merged
    demo = studylib.load(merged, "demo")
    assert demo.ranks == [8] and demo.settings["steps"] == 7 and demo.seeds == [0, 1]  # the file's seeds
    assert studylib.with_studies(merged) == merged  # read in once or twice: the same


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "x: {models: [tiny-gpt2]}\n", "b.yaml": "x: {models: [gpt2]}\n"}, "study 'x' is in both"),
    ({"a.yaml": "studies: {x: {models: [tiny-gpt2]}}\n"}, "holds studies by name at its top level"),
    ({}, "matches no file"),
])
def test_a_bad_study_file_is_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = {**studylib.read_config([REPO / "config.yaml"]), "study_files": [str(tmp_path / "*.yaml")]}
    with pytest.raises(QlbenchError, match=message) as e:
        studylib.load(config, "x")
    assert "\n" not in str(e.value)


@pytest.mark.workflow
def test_the_cells_read_the_config_files_in_the_order_snakemake_merged_them(tmp_path):
    """The Snakefile's config.yaml first, then --configfile's over it: a cell must not read config.yaml last (its
    models and datasets would win in the cell and lose in Snakemake: identities that never agree)."""
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())  # the Snakefile's `configfile:`
    dry = snakemake(tmp_path, "-n", "-p", "--config", "study=micro", configfile=CONFIGS[1])
    assert dry.returncode == 0, dry.stdout[-3000:]
    run = next(line for line in dry.stdout.splitlines() if "qlbench run" in line)
    assert f"--config config.yaml --config {CONFIGS[1]} --study micro" in run, run
