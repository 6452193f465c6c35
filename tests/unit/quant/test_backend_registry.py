"""A backend is one file: a test writes a toy backend into a folder of its own, and the config, `qlbench settings` and
a real cell take it with no other edit; a config that asks a backend for what it does not declare fails in one line."""

from __future__ import annotations

import os
import subprocess
import textwrap

import polars as pl
import pytest
import yaml

from conftest import BIN, CONFIG_ARGS

# rounds each planned weight to a grid of 2^(bits-1) - 1 steps of its own absmax, and says which modules it touched
TOY = textwrap.dedent('''
    from qlbench.registry import Backend

    BACKEND = Backend(name="toy", summary="a test's own backend: absmax rounding of the whole tensor",
                      widths={"int": (3, 4)})


    def apply(model, plan, settings):
        import torch

        from qlbench.quant.formats import out_in
        from qlbench.quant.stats import error_stats

        stats = []
        with torch.no_grad():
            for name, bits in plan.items():
                module = model.get_submodule(name)
                w = out_in(module, module.weight.data)
                step = w.abs().max() / (2 ** (bits - 1) - 1)
                wq = torch.round(w / step) * step
                stats.append({**error_stats(name, bits, w, wq), "weight_bytes": w.numel() * bits // 8 + 4})
                module.weight.data.copy_(out_in(module, wq))
        return stats
''')


@pytest.fixture
def toy_env(tmp_path):
    folder = tmp_path / "backends"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY)
    return {**os.environ, "QLBENCH_BACKENDS": str(folder), "HF_HUB_OFFLINE": "1"}


def qlbench(*args, env, cwd, timeout=180):
    return subprocess.run([BIN / "qlbench", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def toy_study(tmp_path, **settings) -> str:
    path = tmp_path / "toy.yaml"
    study = {"models": ["micro-gpt2"], "bits": [16, 4], "ranks": [4], "masks": ["all"], "seeds": [0],
             "dataset": "chatterbot", "targets": ["c_attn"], "steps": 4, "batch_size": 4, "seq_len": 32,
             "eval_batches": 2, "backend": "toy", **settings}
    path.write_text(yaml.safe_dump({"studies": {"toy": study}}))
    return str(path)


def test_a_toy_backend_in_its_own_file_runs_a_cell(tmp_path, toy_env, micro_resources):
    listed = qlbench("settings", env=toy_env, cwd=tmp_path)
    assert listed.returncode == 0 and "toy" in listed.stdout and "absmax rounding" in listed.stdout
    config = toy_study(tmp_path)
    done = qlbench("run", *CONFIG_ARGS, "-c", config, "--study", "toy", "--cell",
                   "micro-gpt2/b4/r4/all/s0", "--out", tmp_path / "cell", env=toy_env, cwd=micro_resources.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    row = pl.read_parquet(tmp_path / "cell/row.parquet").row(0, named=True)
    layers = pl.read_parquet(tmp_path / "cell/layers.parquet")
    assert row["backend"] == "toy" and row["n_quantized"] == layers.height == 8  # 2 blocks x 4 linears
    assert set(layers["module_bits"]) == {4}
    # the toy's own bytes, not the fake backend's: 4 bits a weight plus one 4-byte scale per module
    assert row["weight_mem_mb"] < row["base_params"] * 4 / 2**20
    assert row["quant_mse"] > 0 and row["eval_loss_before"] != row["eval_loss"]


def test_widths_a_backend_does_not_declare_are_refused_before_any_job(tmp_path, toy_env):
    config = toy_study(tmp_path, bits=[16, 8])
    done = qlbench("grid", *CONFIG_ARGS, "-c", config, "toy", env=toy_env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: studies.toy: backend 'toy' cannot quantize 'int' at 8 bits (it can do 3, 4; the 'fake' backend "
        "simulates 2-8)")


def test_without_its_folder_the_backend_is_unknown(tmp_path):
    config = toy_study(tmp_path)
    done = qlbench("grid", *CONFIG_ARGS, "-c", config, "toy", env={**os.environ}, cwd=tmp_path)
    assert done.returncode == 1 and "studies.toy.backend" in done.stderr and "'toy' is not one of" in done.stderr
