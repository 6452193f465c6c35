"""The backend table from hand-made cells of several studies (no model, no SmolLM2): every number worked out by hand."""

import math

import polars as pl
import pytest

from qlbench import registry
from qlbench.analysis import backends

NAN = float("nan")


def cell(backend, fmt, bits, seed, before, after, merged=NAN, requant=NAN, status="ok", model="m"):
    return {"model": model, "backend": backend, "format": fmt, "bits": bits, "rank": 8, "seed": seed,
            "mask": "none" if bits == 16 else "all", "status": status, "eval_loss_before": before, "eval_loss": after,
            "merged_eval_loss": merged, "merged_requant_eval_loss": requant, "step_time_s": 2.0 + seed}


CELLS = pl.DataFrame([
    cell("fake", "int", 16, 0, 3.0, 2.8),  # a 16-bit cell in the fake study ...
    cell("bnb", "nf", 16, 0, 3.2, 3.0),  # ... and one in the bnb study: one reference row over both
    cell("fake", "nf", 4, 0, 3.5, 3.3, 3.1, 3.4),
    cell("fake", "nf", 4, 1, 3.7, 3.5, 3.3, 3.6),
    cell("bnb", "nf", 4, 0, 3.5, 3.3, 3.1, 3.4),
    cell("bnb", "nf", 8, 0, 3.05, 2.85, 2.82, 2.86),
    cell("fake", "int", 2, 0, 9.0, 6.0, 5.0, 8.0),
    cell("fake", "int", 2, 1, 9.4, 1e9, 5.2, 8.2, status="diverged"),
    cell("torchao", "int", 8, 0, 3.01, 2.81, 2.8, 2.81),
])
UNAVAILABLE = {"torchao": {"int": {4: "no CPU kernel", 1: "outside the table's widths"}, "nf": {4: "present"}},
               "hqq": {"int": {4: "a backend without cells gets no row"}}}


def by_key(table):
    return {(r["backend"], r["format"], r["bits"]): r for r in table.iter_rows(named=True)}


def test_rows_are_seed_means_per_backend_format_and_width():
    rows = by_key(backends.table(CELLS, UNAVAILABLE, {"m": "smollm2"}))
    nf4 = rows[("fake", "nf", 4)]
    assert nf4["seeds"] == 2 and nf4["quantizer"] == "NF4" and nf4["status"] == "ok"
    assert nf4["eval_loss_before"] == pytest.approx(3.6) and nf4["eval_loss"] == pytest.approx(3.4)
    assert nf4["merged_eval_loss"] == pytest.approx(3.2) and nf4["merged_requant_eval_loss"] == pytest.approx(3.5)
    assert nf4["step_time_s"] == pytest.approx(2.5)
    assert rows[("bnb", "nf", 8)]["quantizer"] == "LLM.int8"  # bitsandbytes' only 8-bit format, whatever `format`
    assert rows[("bnb", "nf", 4)]["quantizer"] == "NF4" and rows[("torchao", "int", 8)]["quantizer"] == "int8"
    assert rows[("fake", "int", 2)]["status"] == "diverged (1 of 2 seeds)"


def test_the_16_bit_cells_of_every_study_are_one_reference_named_for_its_weights():
    table = backends.table(CELLS, UNAVAILABLE, {"m": "smollm2"})
    ref = table.row(0, named=True)  # first
    assert (ref["backend"], ref["format"], ref["bits"], ref["seeds"]) == ("–", "–", 16, 2)
    assert ref["eval_loss_before"] == pytest.approx(3.1) and ref["eval_loss"] == pytest.approx(2.9)
    assert "Q4_1" in ref["quantizer"] and math.isnan(ref["merged_eval_loss"])
    assert table.filter(pl.col("bits") == 16).height == 1
    plain = backends.table(CELLS, UNAVAILABLE, {"m": "pretrain"}).row(0, named=True)
    assert plain["quantizer"] == backends.DEFAULT_REFERENCE


def test_a_width_a_present_backend_cannot_run_is_a_row_with_its_reason():
    table = backends.table(CELLS, UNAVAILABLE)
    rows = by_key(table)
    int4 = rows[("torchao", "int", 4)]
    assert int4["status"] == "cannot run: no CPU kernel" and int4["seeds"] == 0 and int4["eval_loss"] is None
    assert ("torchao", "int", 1) not in rows  # outside 2..8
    assert rows[("torchao", "nf", 4)]["status"] == "cannot run: present"  # no cell of it: the reason stands
    assert not any(k[0] == "hqq" for k in rows)  # no study of that backend: nothing to say about it
    order = [(r["backend"], r["bits"]) for r in table.iter_rows(named=True)]
    # the reference, then backend, format (int before nf) and width, widest first
    assert order == [("–", 16), ("bnb", 8), ("bnb", 4), ("fake", 2), ("fake", 4), ("torchao", 8), ("torchao", 4),
                     ("torchao", 4)]


def test_a_present_cell_wins_over_the_declared_reason():
    cells = pl.concat([CELLS, pl.DataFrame([cell("torchao", "int", 4, 0, 3.4, 3.2)])])
    assert by_key(backends.table(cells, UNAVAILABLE))[("torchao", "int", 4)]["status"] == "ok"


def test_markdown_prints_missing_numbers_as_dashes():
    text = backends.markdown(backends.table(CELLS, UNAVAILABLE, {"m": "smollm2"}))
    lines = text.splitlines()
    # the reference's two cells are one seed (0) in two studies: no interval; fake NF4's are seeds 0 and 1: 3.5 and
    # 3.7 before LoRA -> mean 3.6, sd 0.1414, half-width t(0.975, 1)·sd/√2 = 12.7062·0.1 = 1.2706
    assert lines[2].startswith("| m | 16-bit reference") and "| 3.1000 | 2.9000 | – | – |" in lines[2]
    assert any(line.startswith("| m | NF4 | fake | 4 | 3.6000 ± 1.2706 |") for line in lines)
    assert "| m | int4 | torchao | 4 | – | – | – | – | – | cannot run: no CPU kernel |" in lines


def test_torchao_declares_why_int4_is_missing():
    declared = registry.backend("torchao")
    assert not declared.can("int", 4) and "mslk" in declared.unavailable["int"][4]


def test_the_command_reads_several_studies_and_the_models_sources(tmp_path):
    from click.testing import CliRunner

    from qlbench.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("models:\n  m: {source: smollm2, arch: llama, n_layer: 30}\n")
    CELLS.filter(pl.col("backend") == "fake").write_parquet(tmp_path / "a.parquet")
    CELLS.filter(pl.col("backend") != "fake").write_parquet(tmp_path / "b.parquet")
    result = CliRunner().invoke(main, ["backends-table", "-c", str(config), str(tmp_path / "a.parquet"),
                                       str(tmp_path / "b.parquet"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(tmp_path / "t" / "backends_table.parquet")
    assert table.height == 7 and "Q4_1" in table["quantizer"][0]
    assert "cannot run: no CPU path in torchao" in (tmp_path / "t" / "backends_table.md").read_text()


def test_intervals_over_seeds_and_asymmetric_or_grouped_cells_are_rows_of_their_own():
    import json

    def served(backend, bits, seed, loss, symmetric=True, group=None):
        row = cell(backend, "int", bits, seed, loss + 0.2, loss, loss - 0.1, loss + 0.05)
        return {**row, "settings_json": json.dumps({"symmetric": symmetric, "group_size": group})}

    cells = pl.DataFrame([served("gguf", 4, 0, 3.0), served("gguf", 4, 1, 3.2),
                          served("gguf", 4, 0, 2.9, symmetric=False), served("gguf", 4, 1, 3.0, symmetric=False),
                          served("compressed_tensors", 4, 0, 3.1, group=64)])
    rows = {r["quantizer"]: r for r in backends.table(cells).iter_rows(named=True)}
    assert set(rows) == {"Q4_0", "Q4_1", "W4A16 g64"}  # gguf's names, by symmetric; the study's group size
    assert rows["Q4_0"]["eval_loss"] == pytest.approx(3.1)
    assert rows["Q4_0"]["eval_loss_ci"] == pytest.approx(12.7062 * 0.1, rel=1e-4)  # sd 0.1414 of 3.0, 3.2; n 2
    assert rows["Q4_1"]["eval_loss_ci"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert math.isnan(rows["W4A16 g64"]["eval_loss_ci"])  # one seed: no interval


def test_costs_are_paired_with_the_reference_of_the_same_seed():
    # reference after LoRA 3.0 (seed 0), 3.2 (seed 1); Q4 after 3.1, 3.4: costs 0.1, 0.2 -> 0.15, sd 0.0707, n 2;
    # unpaired the Q4 row's interval would be 12.7 x 0.15 (its losses' sd 0.212 / sqrt 2), the paired one 12.7 x 0.05
    cells = pl.DataFrame([cell("gguf", "int", 16, 0, 3.5, 3.0), cell("gguf", "int", 16, 1, 3.5, 3.2),
                          cell("gguf", "int", 4, 0, 3.9, 3.1, 3.05, 3.3), cell("gguf", "int", 4, 1, 3.9, 3.4, 3.2, 3.35),
                          cell("gguf", "int", 8, 2, 3.6, 3.3, 3.3, 3.3)])  # a seed the reference lacks: no cost
    rows = {r["bits"]: r for r in backends.table(cells).iter_rows(named=True)}
    q4 = rows[4]
    assert q4["eval_loss_before_cost"] == pytest.approx(0.4) and q4["eval_loss_before_cost_ci"] == pytest.approx(0.0)
    assert q4["eval_loss_cost"] == pytest.approx(0.15)
    assert q4["eval_loss_cost_ci"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert q4["eval_loss_ci"] == pytest.approx(12.7062 * 0.15, rel=1e-4)
    assert q4["merged_eval_loss_cost"] == pytest.approx(0.025)  # merged (3.05, 3.2) against after LoRA (3.0, 3.2)
    assert q4["merged_requant_eval_loss_cost"] == pytest.approx(0.225)  # requantized (3.3, 3.35): 0.3, 0.15
    assert q4["merged_requant_eval_loss_cost_ci"] == pytest.approx(12.7062 * 0.075, rel=1e-4)
    assert rows[8]["eval_loss_cost"] is None and rows[16]["eval_loss_cost"] is None
    text = backends.cost_markdown(backends.table(cells))
    assert "| m | Q4_0 | gguf | 4 | +0.4000 ± 0.0000 | +0.1500 ± 0.6353 |" in text and "| 16 |" not in text
