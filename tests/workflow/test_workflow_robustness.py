"""The robustness study through the real snakemake, small: a classifier cell on the micro base, GBDA white-box
against FP32 and the 4-bit model, FP32's texts replayed at 4 bits, the table; then one evaluation deleted, and the
workflow plans exactly that evaluation and the table again."""

import polars as pl

from conftest import job_counts, snakemake, write_config


def test_the_robustness_study_runs_through_snakemake_and_replans_a_lost_evaluation(tmp_path, micro_resources,
                                                                                    repo_config):
    config = repo_config
    config["studies"]["robustness"].update(
        models=["micro-gpt2"], seeds=[0], steps=20, seq_len=16, batch_size=8, dataset="chatterbot-topics",
        robustness={"examples": 2, "precisions": ["fp32", "fake4"], "attacked": ["fp32", "fake4"],
                    "attack": {"steps": 2, "batch": 2}})
    path = write_config(tmp_path / "robust.yaml", config)
    run = snakemake(tmp_path, "--cores", "2", "--config", "study=robustness", configfile=path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = pl.read_parquet(tmp_path / "results/robustness/robustness.parquet")
    pairs = {(r["attacked"], r["precision"]) for r in table.iter_rows(named=True)}
    assert pairs == {("fp32", "fp32"), ("fp32", "fake4"), ("fake4", "fake4")}  # transfer, and each attacked direct
    root = tmp_path / "results/robustness/robustness/micro-gpt2/b16/r8/none/s0"  # 16 bits: no mask
    (root / "against-fp32/fake4.parquet").unlink()
    dry = snakemake(tmp_path, "-n", "--config", "study=robustness", configfile=path)
    counts = job_counts(dry.stdout)
    assert counts.get("robust_eval") == 1 and counts.get("robustness") == 1 and "attack" not in counts, dry.stdout[-3000:]
    assert "against-fp32/fake4.parquet" in dry.stdout
