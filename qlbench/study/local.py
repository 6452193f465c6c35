"""Local models and datasets checked when the config is loaded, before any job: a folder without the files a
model needs, or a record without the fields its format needs, fails here with one line naming the file and the
field, not in every cell after it queued on a cluster. Torch-free and fast: JSON and parquet headers only."""

from __future__ import annotations

import json
from pathlib import Path

from qlbench.errors import QlbenchError

# the fields each format reads (one name of each tuple; datasets_io.to_examples reads the same)
TURNS = ("dialog", "dialogue", "utterances", "turns", "conversation")
FIELDS = {
    "instruction": [("instruction",), ("output", "response")],
    "qa": [("context",), ("question",), ("answers", "answer")],
    # TRL's formats (qlbench.data.sft reads them, task sft trains on them)
    "text": [("text",)],
    "prompt_completion": [("prompt",), ("completion",)],
    "conversational": [("messages",)],
}
SFT_FORMATS = ("text", "prompt_completion", "conversational")
SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  # a `datasets.save_to_disk` folder's own files
WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER = ("tokenizer.json", "vocab.json", "tokenizer.model")
LAYERS = ("n_layer", "num_hidden_layers")  # what GPT-2 and Llama configs call their block count
SCAN = 1000  # records read from a JSON/JSONL file: enough to catch a wrong file, cheap for a large one


def check_model(spec: dict, what: str) -> None:
    folder = Path(spec["name"])
    if not folder.exists():
        raise QlbenchError(f"{what}: no such file or folder {spec['name']!r} (relative paths start from {Path.cwd()})")
    if not folder.is_dir():
        raise QlbenchError(f"{what}: {folder} is a file; name a Hugging Face model folder (config.json, weights)")
    cfg_file = folder / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except OSError:
        raise QlbenchError(f"{what}: {cfg_file}: missing (a Hugging Face model folder has one)") from None
    except ValueError as e:
        raise QlbenchError(f"{what}: {cfg_file}: not JSON ({e})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise QlbenchError(f"{what}: {cfg_file}: no field 'model_type'")
    layers = next((cfg[k] for k in LAYERS if k in cfg), None)
    if layers is not None and layers != spec["n_layer"]:
        field = next(k for k in LAYERS if k in cfg)
        raise QlbenchError(f"{what}: {cfg_file}: {field} is {layers}, but the model entry's n_layer is "
                           f"{spec['n_layer']}")
    if not any(next(folder.glob(p), None) for p in WEIGHTS):
        raise QlbenchError(f"{what}: {folder}: no weights (model.safetensors or pytorch_model.bin)")
    if not any((folder / f).exists() for f in TOKENIZER):
        raise QlbenchError(f"{what}: {folder}: no tokenizer ({', '.join(TOKENIZER)})")


def check_dataset(spec: dict, what: str) -> None:
    path = Path(spec["name"])
    if not path.exists():
        raise QlbenchError(f"{what}: no such file or folder {spec['name']!r} (relative paths start from {Path.cwd()})")
    if path.is_dir() and any((path / f).exists() for f in SAVED):
        return  # arrow files: read by `datasets` (task sft's check at the workflow's start), not here
    files = sorted(f for f in path.iterdir() if f.suffix in (".json", ".jsonl", ".parquet")) if path.is_dir() \
        else [path]
    needs = _needs(spec)
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            _check_fields(pq.read_schema(file).names, needs, spec["format"], f"{what}: {file}")
        elif file.suffix in (".json", ".jsonl"):
            for where, record in records(file, what):
                if not isinstance(record, dict):
                    raise QlbenchError(f"{what}: {where}: a record must be a JSON object, not {type(record).__name__}")
                _check_fields(record, needs, spec["format"], f"{what}: {where}")


def _needs(spec: dict) -> list[tuple[str, ...]]:
    fmt = spec["format"]
    if fmt == "dialogue":
        return [TURNS + ("prompt",)]
    if fmt == "classification":
        return [(spec.get("text_field", "text"),), (spec.get("label_field", "label"),)]
    return FIELDS.get(fmt, [])


def _check_fields(names, needs, fmt: str, where: str) -> None:
    for options in needs:
        if not any(n in names for n in options):
            wanted = " or ".join(repr(n) for n in options)
            raise QlbenchError(f"{where}: no field {wanted} (format {fmt} needs "
                               f"{', '.join('/'.join(o) for o in needs)})")


def records(file: Path, what: str, limit: int | None = SCAN, empty_ok: bool = False):
    """(where, record) for the first `limit` records (None: all) of a JSON array or a JSON-lines file; `what` starts
    each error line."""
    with open(file, encoding="utf-8") as f:
        head = f.read(4096).lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise QlbenchError(f"{what}: {file}: not JSON ({e})") from None
        yield from ((f"{file} record {i + 1}", r) for i, r in enumerate(data[:limit]))
        return
    with open(file, encoding="utf-8") as f:
        seen = 0
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise QlbenchError(f"{what}: {file} line {number}: not JSON ({e})") from None
            yield f"{file} line {number}", record
            seen += 1
            if limit is not None and seen >= limit:
                return
    if seen == 0 and not empty_ok:
        raise QlbenchError(f"{what}: {file}: no records")
