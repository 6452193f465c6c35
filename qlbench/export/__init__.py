"""What leaves qlbench for other tools: a sensitivity recommendation as configs others load (`hqq`: an HQQ
per-layer config), a recommendation or one cell's merged model as files serving engines open (`gguf`;
`compressed_tensors`: a compressed-tensors folder, which replaced the llm-compressor recipe), and a study's finished
cells as MLflow runs (`track`). No module here imports torch at its top; `hqq.load_hqq` and the file writers import
it when called."""

from __future__ import annotations


def load_hqq(model, config_path, **kwargs):
    """The model (or a model folder) with the exported HQQ config applied (see `qlbench.export.hqq.load_hqq`)."""
    from qlbench.export.hqq import load_hqq as load

    return load(model, config_path, **kwargs)
