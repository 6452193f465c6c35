"""The similarity aggregate: stored outputs of quantized cells against their 16-bit references, no model."""

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from qlbench.tasks import generate as gen
from qlbench.study import config as study, grid
from qlbench.analysis import similarity as sim


def test_read_safetensors_without_torch_matches_torch(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.randn(2, 2).half()}
    save_file(t, str(tmp_path / "x.safetensors"))
    back = sim.read_safetensors(tmp_path / "x.safetensors")
    for k, v in t.items():
        assert back[k].shape == tuple(v.shape)
        assert np.array_equal(back[k].astype(np.float32), v.float().numpy())


def test_delta_w_and_layer_metrics_by_hand():
    a = np.array([[1.0, 0.0, 2.0]])  # r=1, in=3
    b = np.array([[1.0], [2.0]])  # out=2
    dw = sim.delta_w({"base_model.model.h.0.attn.c_attn.lora_A.weight": a,
                      "base_model.model.h.0.attn.c_attn.lora_B.weight": b}, scale=2.0)
    assert list(dw) == ["h.0.attn.c_attn"]
    assert np.allclose(dw["h.0.attn.c_attn"], 2.0 * np.array([[1, 0, 2], [2, 0, 4]]))
    same = sim.layer_similarity(dw, dw)[0]
    assert same["dw_cos"] == pytest.approx(1.0) and same["dw_l2"] == 0.0 and same["dw_rel"] == 0.0
    flipped = sim.layer_similarity({k: -v for k, v in dw.items()}, dw)[0]
    assert flipped["dw_cos"] == pytest.approx(-1.0) and flipped["dw_rel"] == pytest.approx(2.0)


def test_token_match():
    assert sim.token_match([1, 2, 3], [1, 2, 4]) == pytest.approx(2 / 3)
    assert sim.token_match([1, 2], [1, 2, 3]) == pytest.approx(2 / 3)  # a missing token is a mismatch
    assert sim.token_match([5, 1, 2], [1, 2]) == 0.0  # position by position, no alignment
    assert sim.token_match([], []) == 1.0


MODULE = "base_model.model.transformer.h.0.attn.c_attn"


def _write_cell(root, st, cell, a, b, outputs, hidden):
    from safetensors.numpy import save_file

    from qlbench.results import write_parquet

    d = root / st.name / "cells" / cell.path
    d.mkdir(parents=True)
    save_file({f"{MODULE}.lora_A.weight": a.astype(np.float32), f"{MODULE}.lora_B.weight": b.astype(np.float32)},
              str(d / "adapter.safetensors"))
    coords = {"study": st.name, **cell.coords()}
    write_parquet(pl.DataFrame([{**coords, "lora_alpha": 2.0 * cell.rank, "eval_loss": 3.0 - cell.bits / 100}]),
                  d / "row.parquet")
    rows = [{"probe": i, "prompt": "p", "reference": "r", "answers": [], "output": "", "output_ids": ids,
             "em": None, "f1": None, "hidden_mean": h} for i, (ids, h) in enumerate(zip(outputs, hidden))]
    write_parquet(gen.frame(coords, rows), d / "generations.parquet")


@pytest.fixture
def fake_study(tmp_path, repo_config):
    config = {**repo_config, "studies": {"simtest": {
        "models": ["micro-gpt2"], "bits": [16, 4], "ranks": [2, 4], "masks": ["all"], "seeds": [0],
        "dataset": "chatterbot", "format": "int", "targets": ["c_attn"]}}}
    st = study.load(config, "simtest")
    rng = np.random.default_rng(0)
    for rank in (2, 4):
        a, b = rng.normal(size=(rank, 8)), rng.normal(size=(24, rank))
        _write_cell(tmp_path, st, grid.Cell("micro-gpt2", 16, rank, "none", 0), a, b,
                    [[1, 2, 3], [4, 5]], [[1.0, 0.0], [0.0, 1.0]])
        if rank == 2:  # far from its reference: B rotated away, one token and one embedding differ
            _write_cell(tmp_path, st, grid.Cell("micro-gpt2", 4, rank, "all", 0), a, b + 2 * rng.normal(size=b.shape),
                        [[1, 2, 9], [4, 5]], [[1.0, 1.0], [0.0, 1.0]])
        else:  # identical to its reference
            _write_cell(tmp_path, st, grid.Cell("micro-gpt2", 4, rank, "all", 0), a, b,
                        [[1, 2, 3], [4, 5]], [[1.0, 0.0], [0.0, 1.0]])
    return st, tmp_path


def test_pairs_and_r_star(fake_study):
    st, root = fake_study
    pairs, layers, skipped = sim.pairs(st, str(root))
    assert skipped == [] and pairs.height == 2 and layers.height == 2
    r2 = pairs.filter(pl.col("rank") == 2).row(0, named=True)
    r4 = pairs.filter(pl.col("rank") == 4).row(0, named=True)
    assert r2["token_match"] == pytest.approx((2 / 3 + 1) / 2) and r2["output_match"] == 0.5
    assert r2["embed_cos"] == pytest.approx((np.sqrt(0.5) + 1) / 2)
    assert r2["dw_cos_mean"] < 0.95 and r2["dw_rel_mean"] > 0.1
    assert r4["token_match"] == 1.0 and r4["dw_cos_mean"] == pytest.approx(1.0) and r4["dw_rel_mean"] == 0.0
    assert r4["eval_loss_delta"] == pytest.approx(0.12)
    rstar = sim.r_star(pairs)
    got = {r["metric"]: r["r_star"] for r in rstar.iter_rows(named=True)}
    assert got == {"dw_cos_mean": 4, "token_match": 4, "embed_cos": 4}
    assert sim.r_star(pairs, threshold=0.8).filter(pl.col("metric") == "token_match")["r_star"][0] == 2


def test_missing_reference_outputs_are_skipped_not_fatal(fake_study):
    st, root = fake_study
    (root / st.name / "cells" / "micro-gpt2/b16/r2/none/s0/generations.parquet").unlink()
    pairs, _, skipped = sim.pairs(st, str(root))
    assert pairs.height == 1 and skipped == ["micro-gpt2/b4/r2/all/s0"]


def test_similarity_command_imports_no_torch(fake_study, tmp_path):
    st, root = fake_study
    config = tmp_path / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump(st.config))
    # the workflow's input to every analysis; similarity reads the cells' own files beside it
    pl.DataFrame({"study": ["simtest"]}).write_parquet(root / "simtest" / "cells.parquet")
    code = ("import sys; from qlbench.cli import main\n"
            "try:\n    main(['analyze', 'similarity', 'simtest', '-c', sys.argv[1], '--results', sys.argv[2]])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code, str(config), str(root)], check=True)
    assert pl.read_parquet(root / "simtest" / "rstar.parquet").height == 3
    assert pl.read_parquet(root / "simtest" / "similarity_layers.parquet")["module"].to_list() == \
        ["transformer.h.0.attn.c_attn"] * 2


def test_r_star_is_the_rank_from_which_every_higher_rank_passes():
    # rank 4 passes, 8 fails again, 16 and 32 pass: r* is 16, not 4
    assert sim.first_passing_for_good([4, 8, 16, 32], [0.96, 0.90, 0.97, 0.99], 0.95) == 16
    assert sim.first_passing_for_good([4, 8, 16], [0.96, 0.97, 0.90], 0.95) is None  # the highest fails
    assert sim.first_passing_for_good([2, 4], [0.99, 0.99], 0.95) == 2
    assert sim.first_passing_for_good([2, 4, 8], [0.99, float("nan"), 0.99], 0.95) == 8
