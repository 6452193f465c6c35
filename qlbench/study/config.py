"""config.yaml -> validated studies: the schema, the checks no schema can express, and each study's fixed settings.

Every check runs before any job is submitted (the Snakefile and `qlbench sweep` both call `load`), and every
failure is one QlbenchError line that names the problem.
"""

from __future__ import annotations

import copy
import json
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from qlbench.errors import QlbenchError
from qlbench.study import masks as masklang, names, targets

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
AXES = ("models", "bits", "ranks", "masks", "seeds", "n_train")

# Settings a study may leave out; `qlbench run --set KEY=VALUE` may override any of them.
DEFAULTS: dict = {
    "format": "int",
    "backend": "fake",
    "symmetric": True,
    "group_size": None,  # None: per output channel for int, 64 for nf/fp
    "double_quant": False,
    "high_bits": 16,
    "adapter_bits": 16,
    "bits_target": "base",  # what the cell's `bits` quantize: the base's masked layers, or the LoRA matrices
    "act_bits": 16,  # per-token activation quantization of the quantized linears' inputs (16: off)
    "kv_bits": 16,  # per-token quantization of attention keys and values (16: off)
    "layer_bits": {},  # {mask: bits} pinned widths on top of the cell's mask and high_bits (QaLoF's per-layer map)
    "switch_bits": [],  # QaLoF switchable precision: widths the masked layers cycle through, one adapter each
    "switch_schedule": "cyclic",  # or random
    "cpt_bits": [],  # cyclic precision training: [low, high] ([]: off)
    "cpt_cycles": 32,  # CPT's periods over the run (QaLoF's num_cyclic_period)
    "cpt_schedule": "cosine",  # or triangular
    "eval_bits": [],  # widths the trained model is evaluated at without retraining ([]: the switchable/CPT widths)
    "eval_maps": {},  # {label: {mask: bits}}: per-layer maps the trained model is evaluated on (unlisted: high_bits)
    "eval_scan": None,  # {each: block|module, bits, rest}: the layer-wise scan of the trained model
    "task": "causal_lm",  # qlbench.tasks: causal_lm | extractive_qa
    "probe_bits": 0,  # reference cells estimate each module's sensitivity at this width (0: off)
    "probe_batches": 4,
    "targets": None,  # None: the architecture's attention input projection(s)
    "lora_alpha": "2r",
    "lora_dropout": 0.0,
    "steps": 40,
    "lr": 2e-3,
    "warmup": 0.1,
    "weight_decay": 0.0,
    "optimizer": "adamw",  # or paged_adamw / paged_adamw_8bit (bitsandbytes' paged optimizers, as QLoRA)
    "grad_clip": 1.0,
    "batch_size": 16,
    "seq_len": 128,
    "eval_batches": None,
    "grad_var_points": 0,
    "checkpoint_every": 0,
    "compute_dtype": "float32",
    "base_dtype": "auto",  # the base's weights as loaded: auto = bfloat16 on a GPU, float32 on a CPU
    "device": "auto",
    "gpus": 0,
    "fail": None,
    "n_train": None,
}
# Which (format, bits) each backend can do; `fake` simulates anything from 2 to 8 bits. bitsandbytes' only 8-bit
# weight format is LLM.int8, so with bnb, 8 bits (as bits or high_bits) is LLM.int8 whatever the format.
BACKEND_BITS = {
    "fake": {"int": range(2, 9), "nf": range(2, 9), "fp": (4,)},
    "bnb": {"int": (8,), "nf": (4, 8), "fp": (4, 8)},
}


@dataclass(frozen=True)
class Study:
    name: str
    models: list[str]
    bits: list[int]
    ranks: list[int]
    masks: dict[str, list[str]]  # model -> expanded mask strings
    seeds: list[int]
    n_train: list[int | None]
    targets: list[str | None]  # presets when `targets: {each: [...]}` makes them an axis, else [None]
    settings: dict  # fixed settings, defaults filled in
    config: dict = field(repr=False)  # the whole validated config

    def model(self, name: str) -> dict:
        return self.config["models"][name]

    def layout(self, model: str) -> masklang.Layout:
        spec = self.model(model)
        return masklang.layout(spec["arch"], spec["n_layer"])


def read_config(paths: list[str | Path]) -> dict:
    """Read and merge config files (later ones win, nested mappings merged), as Snakemake does."""
    import yaml

    merged: dict = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise QlbenchError(f"config file {str(path)!r}: {e.strerror}") from None
        try:
            data = _yaml(text) or {}
        except yaml.YAMLError as e:
            raise QlbenchError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        _merge(merged, data)
    return merged


def _yaml(text: str):
    """libyaml's safe loader where it is built: the same data ~10x faster (every command reads config and schema)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def check_schema(config: dict) -> None:
    import jsonschema

    schema = _yaml(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise QlbenchError(f"config {where}: {_schema_message(err)}")


def _schema_message(err) -> str:
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key")
    if err.validator == "not" and isinstance(err.instance, int):
        return f"{err.instance} bits is not a supported width (use 2-8 or 16)"
    if err.validator in ("minimum", "maximum") and "bits" in [str(p) for p in err.absolute_path]:
        return f"{err.instance} bits is not a supported width (use 2-8 or 16)"
    return err.message.splitlines()[0]


def load(config: dict, study: str | None = None) -> Study:
    """Validate the whole config and return one study, ready for grid expansion."""
    check_schema(config)
    names.check_config(config)  # keys become folders and shell words: plain names only
    name = study or config.get("study") or "demo"
    if name not in config["studies"]:
        raise QlbenchError(f"study {name!r} is not in the config; studies: {', '.join(config['studies'])}")
    raw = copy.deepcopy(config["studies"][name])
    where = f"studies.{name}"
    for model in raw["models"]:
        if model not in config["models"]:
            raise QlbenchError(f"{where}.models: unknown model {model!r}; models: {', '.join(config['models'])}")
    if raw["dataset"] not in config["datasets"]:
        raise QlbenchError(
            f"{where}.dataset: unknown dataset {raw['dataset']!r}; datasets: {', '.join(config['datasets'])}"
        )
    # local files must exist now, not fail in every cell after it queued on a cluster
    local = [(f"dataset {raw['dataset']!r}", config["datasets"][raw["dataset"]])]
    local += [(f"model {m!r}", config["models"][m]) for m in raw["models"]]
    for what, spec in local:
        if spec["source"] == "path" and not Path(spec["name"]).exists():
            raise QlbenchError(f"{where}: {what}: no such file or folder {spec['name']!r} "
                               f"(relative paths start from {Path.cwd()})")
    settings = {**DEFAULTS, **{k: v for k, v in raw.items() if k not in AXES}}
    n_train = raw.get("n_train")
    n_train_axis = n_train if isinstance(n_train, list) else [n_train]
    settings.pop("n_train", None)
    targets_axis = [None]
    if isinstance(settings["targets"], dict):  # {each: [qv, kv, ...]}: an axis; each cell names its preset
        targets_axis, settings["targets"] = list(settings["targets"]["each"]), None
    check_settings(settings, raw["bits"], where)
    study_masks = {}
    for model in raw["models"]:
        spec = config["models"][model]
        lay = masklang.layout(spec["arch"], spec["n_layer"])
        expanded = [names.check(f"{where}.masks: mask", m) for entry in raw["masks"]
                    for m in masklang.expand(entry, lay)]
        for mask in expanded + list(settings["layer_bits"]):
            masklang.resolve(mask, lay)
        study_masks[model] = list(dict.fromkeys(expanded))
        for entry in [settings["targets"]] + targets_axis:  # a preset or a Q/K/V slice this arch lacks fails here
            try:
                if entry:
                    targets.resolve(entry, spec["arch"])
            except QlbenchError as e:
                raise QlbenchError(f"{where}.targets (model {model!r}): {e}") from None
    return Study(
        name=name,
        models=raw["models"],
        bits=sorted(raw["bits"], reverse=True),
        ranks=raw["ranks"],
        masks=study_masks,
        seeds=raw["seeds"],
        n_train=n_train_axis,
        targets=targets_axis,
        settings=settings,
        config=config,
    )


def check_settings(settings: dict, bits: list[int], where: str) -> None:
    """The checks between settings that a schema cannot say: can this backend do these bit widths?"""
    backend, fmt = settings["backend"], settings["format"]
    allowed = BACKEND_BITS[backend][fmt]
    settings = {**DEFAULTS, **settings}
    base_bits = set(bits) if settings["bits_target"] == "base" else set()  # else `bits` go to the adapters
    for b in sorted(base_bits | {settings["high_bits"]} | set(settings["layer_bits"].values())):
        if b != 16 and b not in allowed:
            raise QlbenchError(
                f"{where}: backend {backend!r} cannot quantize {fmt!r} at {b} bits "
                f"(it can do {', '.join(map(str, allowed))}; the 'fake' backend simulates 2-8)"
            )
    switch = settings["switch_bits"]
    if switch and (backend != "fake" or any(b not in switch for b in bits if b < 16)):
        raise QlbenchError(f"{where}.switch_bits {switch}: needs backend 'fake' and every quantized width of bits "
                           f"{sorted(b for b in bits if b < 16)} among its widths")
    check_precision(settings, bits, where)
    if settings["adapter_bits"] != 16 and not 2 <= settings["adapter_bits"] <= 8:
        raise QlbenchError(f"{where}.adapter_bits: {settings['adapter_bits']} (use 2-8, or 16 for none)")
    if settings.get("fail") is not None:
        from qlbench.study import fail

        fail.parse(settings["fail"])  # testing only; a typo must not pass silently


def check_precision(settings: dict, bits: list[int], where: str) -> None:
    """Widths that change after quantization: the fake backend only (it re-quantizes from kept weights); CPT's period
    long enough to visit every width; a switchable model evaluated only at widths it has adapters for."""
    from qlbench.study.schedules import cpt_period, cpt_width

    switch, cpt = settings["switch_bits"], settings["cpt_bits"]
    changing = switch or cpt or settings["eval_bits"] or settings["eval_maps"] or settings["eval_scan"]
    if changing and settings["backend"] != "fake":
        raise QlbenchError(f"{where}: switch_bits, cpt_bits and eval_* need backend 'fake' (it re-quantizes kept "
                           f"full-precision weights); backend is {settings['backend']!r}")
    if switch and cpt:
        raise QlbenchError(f"{where}: switch_bits and cpt_bits exclude each other (one adapter per width, or one)")
    if cpt:
        low, high = cpt
        period = cpt_period(settings["steps"], settings["cpt_cycles"])
        seen = {cpt_width(t, low, high, period, settings["cpt_schedule"]) for t in range(period)}
        if low >= high or seen != set(range(low, high + 1)):
            raise QlbenchError(f"{where}.cpt_bits {cpt}: a period of {period} steps ({settings['steps']} steps / "
                               f"{settings['cpt_cycles']} cycles) visits {sorted(seen)}, not every width from low "
                               f"to high: fewer cycles, more steps, or low < high")
    if switch:
        asked = set(settings["eval_bits"]) | {b for m in settings["eval_maps"].values() for b in m.values() if b < 16}
        if settings["eval_maps"] and settings["high_bits"] < 16:
            asked.add(settings["high_bits"])  # a map's unlisted layers run at high_bits
        if settings["eval_scan"]:
            asked |= {settings["eval_scan"]["bits"], settings["eval_scan"]["rest"]}
        missing = sorted(asked - set(switch))
        if missing:
            raise QlbenchError(f"{where}: the switchable model has adapters for {switch} bits only; evaluated at "
                               f"{missing}")


def parse_override(text: str) -> tuple[str, object]:
    """`KEY=VALUE` from `--set`, VALUE read as YAML (so 8 is an int, [c_attn] a list, true a bool)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise QlbenchError(f"--set {text!r}: use KEY=VALUE")
    if key not in DEFAULTS or key == "n_train":
        names = ", ".join(sorted(k for k in DEFAULTS if k != "n_train"))
        raise QlbenchError(f"--set {key}: unknown setting (n_train is --n-train); settings: {names}")
    return key, yaml.safe_load(value)


def cell_settings(study: Study, overrides: dict | None = None, bits: int | None = None) -> dict:
    """The study's fixed settings with `--set` overrides, re-validated against the schema and, for the backend,
    against the one cell's `bits` when given (a 4-bit cell may use bnb though the study also has 3-bit cells)."""
    settings = {**study.settings, **(overrides or {})}
    if overrides:
        probe = copy.deepcopy(study.config)
        probe["studies"][study.name].update({k: v for k, v in overrides.items() if v is not None})
        check_schema(probe)
        check_settings(settings, study.bits if bits is None else [bits], "--set")
    return settings


def cell_identity(study: Study, cell, settings: dict | None = None) -> tuple[dict, str]:
    """What determines a cell's numbers — its settings (targets resolved, planted trouble left out) — and the hash
    of those with its model, data and coordinates: the row's `config_hash`. A row whose hash differs from this was
    made under other settings: stale."""
    settings = study.settings if settings is None else settings
    if cell.targets:  # the targets axis: the cell's own preset
        settings = {**settings, "targets": cell.targets}
    spec = study.model(cell.model)
    identity = {k: v for k, v in settings.items() if k != "fail"}  # planted trouble changes no number
    identity["targets"] = settings["targets"] or targets.DEFAULT_TARGETS[spec["arch"]]
    chash = config_hash({"model": spec, "dataset": study.config["datasets"][settings["dataset"]],
                         "settings": identity, "cell": cell.coords()})
    return identity, chash


def changed_settings(old_json: str, new: dict) -> str:
    """`steps 30 -> 40, lr 0.002 -> 0.001`: how a stale row's settings differ from the current ones."""
    old = json.loads(old_json)
    new = json.loads(json.dumps(new, default=str))  # the same form the row stored
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys) or "model or data"


def config_hash(payload: dict) -> str:
    """A short, stable hash of what determines a cell's numbers (its model, data, settings, coordinates)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
