"""What leaves qlbench for other tools: a sensitivity recommendation as configs others load (`hqq`: an HQQ
per-layer config; `llmc`: an llm-compressor recipe), and a study's finished cells as MLflow runs (`track`). No
module here imports torch at its top: `qlbench export` and `qlbench track` never load a model; `hqq.load_hqq`
imports torch and hqq when it is called."""

from __future__ import annotations


def load_hqq(model, config_path, **kwargs):
    """The model (or a model folder) with the exported HQQ config applied (see `qlbench.export.hqq.load_hqq`)."""
    from qlbench.export.hqq import load_hqq as load

    return load(model, config_path, **kwargs)
