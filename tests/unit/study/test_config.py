"""Bad input fails before any job, with one line that names the problem — in qlbench and through snakemake."""

import copy

import pytest

from qlbench.study import config as study, grid as gridlib
from qlbench.errors import QlbenchError

from conftest import snakemake, write_config

BAD = [
    ("misspelt key", lambda c: c["studies"]["demo"].update(stpes=10), "unknown key ('stpes' was unexpected)"),
    ("1 bit", lambda c: c["studies"]["demo"].update(bits=[16, 1]), "backend 'fake' cannot quantize 'int' at 1 bits"),
    ("12 bits", lambda c: c["studies"]["demo"].update(bits=[12]), "12 bits is not a supported width"),
    ("rank 0", lambda c: c["studies"]["demo"].update(ranks=[0]), "studies.demo.ranks.0: 0 is less than the minimum of 1"),
    ("mask b99", lambda c: c["studies"]["demo"].update(masks=["b99"]), "mask 'b99': block 99 does not exist"),
    ("bnb 3 bits", lambda c: c["studies"]["demo"].update(backend="bnb", format="nf", bits=[4, 3]),
     "backend 'bnb' cannot quantize 'nf' at 3 bits"),
    ("unknown model", lambda c: c["studies"]["demo"].update(models=["gpt5"]), "unknown model 'gpt5'"),
    ("unknown dataset", lambda c: c["studies"]["demo"].update(dataset="wiki"), "unknown dataset 'wiki'"),
    ("missing data file", lambda c: (c["datasets"].update(mine={"source": "path", "name": "no/such.jsonl",
                                                                 "format": "qa"}),
                                     c["studies"]["demo"].update(dataset="mine")),
     "studies.demo: dataset 'mine': no such file or folder 'no/such.jsonl'"),
    ("missing model folder", lambda c: (c["models"].update(mine={"source": "path", "name": "no/model", "arch": "gpt2",
                                                                 "n_layer": 2}),
                                        c["studies"]["demo"].update(models=["mine"])),
     "studies.demo: model 'mine': no such file or folder 'no/model'"),
    ("0 bits", lambda c: c["studies"]["demo"].update(bits=[16, 0]), "0 bits is not a supported width"),
]


@pytest.mark.parametrize("name,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line(repo_config, name, change, message):
    config = copy.deepcopy(repo_config)
    change(config)
    with pytest.raises(QlbenchError) as err:
        study.load(config, "demo")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_overrides_are_validated(repo_config):
    st = study.load(repo_config, "demo")
    assert study.cell_settings(st, {"steps": 3})["steps"] == 3
    with pytest.raises(QlbenchError, match="unknown setting"):
        study.parse_override("stepz=3")
    with pytest.raises(QlbenchError, match="steps"):
        study.cell_settings(st, {"steps": 0})


def test_a_setting_that_takes_a_number_reads_yaml_1_2_floats_as_numbers(repo_config):
    """`lr: 1e-3` (no dot) is a string to YAML 1.1, which PyYAML and Snakemake read; a number setting reads it as the
    float it is, from a config file and from --set alike, and the cell's identity is the same as `lr: 0.001`'s. A
    string setting keeps its text, and a string that is no number still fails the schema."""
    config = copy.deepcopy(repo_config)
    config["studies"]["demo"].update(lr="1e-3", weight_decay="+2.5E+1", dataset="chatterbot")
    st = study.load(config, "demo")
    assert st.settings["lr"] == 0.001 and isinstance(st.settings["lr"], float)
    assert st.settings["weight_decay"] == 25.0
    plain = copy.deepcopy(repo_config)
    plain["studies"]["demo"].update(lr=0.001, weight_decay=25.0, dataset="chatterbot")
    cell = gridlib.cells(st)[0]
    assert study.cell_identity(st, cell)[1] == study.cell_identity(study.load(plain, "demo"), cell)[1]
    assert study.parse_override("lr=2e-4") == ("lr", 0.0002)
    assert study.parse_override("compute_dtype=1e3") == ("compute_dtype", "1e3")  # not a number setting
    config["studies"]["demo"].update(lr="1e-3x")
    with pytest.raises(QlbenchError, match="'1e-3x' is not of type 'number'"):
        study.load(config, "demo")


@pytest.mark.workflow
@pytest.mark.parametrize("name,change,message", [BAD[i] for i in (0, 1, 3, 4, 8, 9)],
                         ids=[BAD[i][0] for i in (0, 1, 3, 4, 8, 9)])
def test_snakemake_stops_before_any_job(tmp_path, repo_config, name, change, message):
    config = copy.deepcopy(repo_config)
    change(config)
    run = snakemake(tmp_path, "-n", configfile=write_config(tmp_path / "bad.yaml", config))
    assert run.returncode != 0
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], run.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_one_cell_by_hand_is_checked_against_its_own_bits(workdir, repo_config):
    """`--set backend=bnb` for a 4-bit cell of a study that also has 2- and 3-bit cells: allowed (bitsandbytes can
    do 4 bits); for a 3-bit cell: refused with one line, before anything is loaded."""
    import subprocess

    from conftest import BIN

    config = copy.deepcopy(repo_config)
    config["studies"]["micro"].update(bits=[16, 4, 3, 2], steps=2)
    path = write_config(workdir / "wide.yaml", config)
    base = [BIN / "qlbench", "run", "-c", path, "--study", "micro", "--model", "micro-gpt2", "--rank", "4",
            "--set", "backend=bnb", "--set", "format=nf"]
    ok = subprocess.run([*base, "--bits", "4", "--out", workdir / "b4"], cwd=workdir, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (workdir / "b4/row.parquet").exists()
    refused = subprocess.run([*base, "--bits", "3", "--out", workdir / "b3"], cwd=workdir, capture_output=True,
                             text=True)
    assert refused.returncode == 1 and not (workdir / "b3").exists()
    assert refused.stderr.strip().splitlines() == [
        "Error: --set: backend 'bnb' cannot quantize 'nf' at 3 bits (it can do 4, 8; the 'fake' backend simulates 2-8)"]
