"""config.yaml (and the study files it names) -> validated studies: the schema, the checks no schema can express, and
each study's fixed settings.

Every check runs before any job is submitted (the Snakefile and `qlbench sweep` both call `load`), and every
failure is one QlbenchError line that names the problem.
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qlbench import registry
from qlbench.errors import QlbenchError
from qlbench.study import local as local_inputs, masks as masklang, names, settings as settings_tree, targets

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
CHECKOUT = Path(__file__).resolve().parents[2]  # the clone: Snakefile, config.yaml, studies/ (installs are editable)
AXES = ("models", "bits", "ranks", "masks", "seeds", "n_train")

# Settings a study may leave out, with their defaults; `qlbench run --set KEY=VALUE` may override any setting. Their
# one source (names, types, defaults, descriptions, identity) is qlbench.study.settings.
DEFAULTS: dict = settings_tree.defaults()


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
    settings: dict  # fixed settings, defaults filled in, flat as the config names them (what identities hash)
    config: dict = field(repr=False)  # the whole validated config

    @property
    def results(self) -> str:
        return results_root(self.config)

    @property
    def resources(self) -> str:
        return resources_root(self.config)

    @functools.cached_property
    def tree(self) -> settings_tree.Settings:
        """The same settings, typed and frozen (`qlbench.study.settings`)."""
        return settings_tree.build(self.settings)

    def model(self, name: str) -> dict:
        return self.config["models"][name]

    def layout(self, model: str) -> masklang.Layout:
        spec = self.model(model)
        return masklang.layout(spec["arch"], spec["n_layer"])


def results_root(config: dict) -> str:
    """Where results go: the config's `results`, or results/."""
    return config.get("results", "results")


def resources_root(config: dict) -> str:
    """Where prepared bases, tokenizers and tokenized data are cached: the config's `resources`, or resources/."""
    return config.get("resources", "resources")


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


def with_studies(config: dict) -> dict:
    """The config with the studies of its `study_files` read in (glob patterns; a relative one is read from the
    checkout, beside the Snakefile, wherever the command runs). A study the config gives itself wins over a file's,
    key by key, as Snakemake merges config files. `load` calls this: Snakemake and the cells see the same studies."""
    own = config.get("studies", {})
    if not isinstance(own, dict):
        return config  # the schema names it
    studies: dict = {}
    came_from: dict[str, str] = {}  # study -> its file, to name both when two files give one name
    for pattern in _patterns(config):
        paths = sorted(glob.glob(pattern, root_dir=CHECKOUT))
        if not paths:
            raise QlbenchError(f"config study_files: {pattern!r} matches no file (in {CHECKOUT})")
        for path in paths:
            data = read_config([CHECKOUT / path])
            odd = [k for k, v in data.items() if not isinstance(v, dict) or k == "studies"]
            if odd:
                raise QlbenchError(f"study file {path!r}: holds studies by name at its top level "
                                   f"(name: {{models: ..., ...}}), not {', '.join(map(repr, odd))}")
            for name in data:
                if name in came_from:
                    raise QlbenchError(f"study {name!r} is in both {came_from[name]!r} and {path!r}")
                came_from[name] = path
            studies.update({name: copy.deepcopy(study) for name, study in data.items()})  # `<<: *a` shares a's
    _merge(studies, copy.deepcopy(own))
    rest = {k: v for k, v in config.items() if k != "study_files"}
    return {**rest, "studies": studies} if studies or "studies" in config else rest


def _patterns(config: dict) -> list[str]:
    """`study_files` as a list (one pattern may stand alone)."""
    patterns = config.get("study_files", [])
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise QlbenchError(f"config study_files: {patterns!r}: use a file pattern or a list of them")
    return patterns


def schema() -> dict:
    """config.schema.yaml with every setting's schema and description added to a study's properties (from
    qlbench.study.settings; the backends and tasks the registry finds are the allowed values of theirs) and the
    widths the backends declare as the allowed values of every width."""
    out = _yaml(SCHEMA_PATH.read_text())
    out["$defs"]["study"]["properties"].update(
        settings_tree.schema_properties(list(registry.backends()), list(registry.tasks())))
    out["$defs"].update(width_defs(), **settings_tree.robustness_defs())
    return out


def width_defs() -> dict:
    """`$defs` of the widths, from the backends' declarations: `axis_bits` (a cell's bits: a width some backend
    declares, or 16), `bits` (a width qlbench simulates, or 16) and `width` (a width qlbench simulates)."""
    simulated = list(registry.simulated_widths())
    return {"axis_bits": {"type": "integer", "enum": [*registry.widths(), 16]},
            "bits": {"type": "integer", "enum": [*simulated, 16]}, "width": {"type": "integer", "enum": simulated}}


def check_schema(config: dict) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise QlbenchError(f"config {where}: {_schema_message(err)}")


def _schema_message(err) -> str:
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key")
    if err.validator == "enum" and err.validator_value in [d["enum"] for d in width_defs().values()]:
        widths = [w for w in err.validator_value if w != 16]
        return f"{err.instance} bits is not a supported width (use {registry.span(widths)}" + (
            " or 16)" if 16 in err.validator_value else ")")
    return err.message.splitlines()[0]


def load(config: dict, study: str | None = None) -> Study:
    """Validate the whole config and return one study, ready for grid expansion."""
    config = with_numbers(with_studies(config))
    check_schema(config)
    names.check_config(config)  # keys become folders and shell words: plain names only
    name = study or config.get("study") or "demo"
    if name not in config.get("studies", {}):
        raise QlbenchError(f"study {name!r} is not in the config; studies: {', '.join(config.get('studies', {}))}")
    raw = copy.deepcopy(config["studies"][name])
    where = f"studies.{name}"
    for model in raw["models"]:
        if model not in config["models"]:
            raise QlbenchError(f"{where}.models: unknown model {model!r}; models: {', '.join(config['models'])}")
    if raw["dataset"] not in config["datasets"]:
        raise QlbenchError(
            f"{where}.dataset: unknown dataset {raw['dataset']!r}; datasets: {', '.join(config['datasets'])}"
        )
    # local files must exist and hold what they need now, not fail in every cell after it queued on a cluster
    local = [(f"dataset {raw['dataset']!r}", config["datasets"][raw["dataset"]], local_inputs.check_dataset)]
    local += [(f"model {m!r}", config["models"][m], local_inputs.check_model) for m in raw["models"]]
    for what, spec, check in local:
        if spec["source"] == "path":
            try:
                check(spec, what)
            except QlbenchError as e:
                raise QlbenchError(f"{where}: {e}") from None
    settings = read_off({**DEFAULTS, **{k: v for k, v in raw.items() if k not in AXES}})
    n_train = raw.get("n_train")
    n_train_axis = n_train if isinstance(n_train, list) else [n_train]
    settings.pop("n_train", None)
    targets_axis = [None]
    if isinstance(settings["targets"], dict):  # {each: [qv, kv, ...]}: an axis; each cell names its preset
        targets_axis, settings["targets"] = list(settings["targets"]["each"]), None
    check_settings(settings, raw["bits"], where)
    check_sft(settings, config["datasets"][raw["dataset"]], raw["dataset"], where)
    if settings["task"] == "sft":  # `template: model` on a model without one: one line here, not in every cell
        from qlbench.study import chat_template

        for model in raw["models"]:
            try:
                _, text = chat_template.chosen(config["models"][model], resources_root(config), model,
                                               settings.get("template", "auto"))
            except QlbenchError as e:
                raise QlbenchError(f"{where}: {e}") from None
            if settings.get("assistant_only_loss") and not chat_template.has_generation_markers(text):
                raise QlbenchError(f"{where}.assistant_only_loss: model {model!r}'s chat template has no "
                                   "{% generation %} markers to find the assistant turns by (template: chatml has "
                                   "them)")
    study_masks = {}
    for model in raw["models"]:
        spec = config["models"][model]
        lay = masklang.layout(spec["arch"], spec["n_layer"])
        expanded = [names.check(f"{where}.masks: mask", m) for entry in raw["masks"]
                    for m in masklang.expand(entry, lay)]
        for mask in expanded + list(settings["layer_bits"]):
            masklang.resolve(mask, lay)
        if settings.get("deploy") is not None:  # a serving format: its backend and presets declared, masks real
            from qlbench.study import deploy

            deploy.check(settings["deploy"], lay, where)
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
    declared = registry.backend(backend)
    allowed = declared.widths.get(fmt, ())
    settings = {**DEFAULTS, **settings}
    base_bits = set(bits) if settings["bits_target"] == "base" else set()  # else `bits` go to the adapters
    for b in sorted(base_bits | {settings["high_bits"]} | set(settings["layer_bits"].values())):
        if b != 16 and b not in allowed:
            raise QlbenchError(
                f"{where}: backend {backend!r} cannot quantize {fmt!r} at {b} bits "
                f"(it can do {', '.join(map(str, allowed)) or 'no width in this format'}; {_simulated()})"
            )
    switch = settings["switch_bits"]
    if switch and (not declared.requantizes or any(b not in switch for b in bits if b < 16)):
        raise QlbenchError(f"{where}.switch_bits {switch}: needs a backend that re-quantizes in place "
                           f"({_requantizing()}) and every quantized width of bits "
                           f"{sorted(b for b in bits if b < 16)} among its widths")
    check_precision(settings, bits, where)
    changing = ("switch_bits", "cpt_bits", "eval_bits", "eval_maps", "eval_scan")
    if settings.get("lora_init") == "loftq" and any(settings.get(k) for k in changing):
        raise QlbenchError(f"{where}.lora_init loftq: does not combine with widths that change after quantization "
                           f"({', '.join(k for k in changing if settings.get(k))}): LoftQ fits the adapter to one "
                           "quantized weight")
    if settings.get("loss_kernel") == "chunked" and settings["task"] != "causal_lm":
        raise QlbenchError(f"{where}.loss_kernel chunked: a causal LM's loss (task causal_lm), not "
                           f"{settings['task']!r}'s")
    if settings.get("loss_kernel") == "chunked" and settings["switch_schedule"] == "sequential":
        raise QlbenchError(f"{where}.loss_kernel chunked: sequential training distils from the teacher's logits, "
                           "which the chunked loss never makes whole; use loss_kernel standard")
    if settings["adapter_bits"] != 16 and settings["adapter_bits"] not in registry.simulated_widths():
        raise QlbenchError(f"{where}.adapter_bits: {settings['adapter_bits']} (use "
                           f"{registry.span(registry.simulated_widths())}, or 16 for none)")
    if settings.get("fail") is not None:
        from qlbench.study import fail

        fail.parse(settings["fail"])  # testing only; a typo must not pass silently


def check_sft(settings: dict, dataset: dict, name: str, where: str) -> None:
    """TRL's formats train under task sft (causal_lm's stream of blocks reads prompt/response examples); sft's own
    settings mean nothing to another task."""
    fmt = dataset["format"]
    if fmt in local_inputs.SFT_FORMATS and settings["task"] != "sft":
        raise QlbenchError(f"{where}: dataset {name!r} has format {fmt}, which task sft trains on (set task: sft); "
                           f"task is {settings['task']!r}")
    if settings["task"] == "sft" and fmt in ("extractive", "classification"):
        raise QlbenchError(f"{where}: task sft trains on prompt-completion, chat or text data, not format {fmt}")
    given = [k for k, s in settings_tree.SPECS.items() if s.group == "sft" and k in settings]
    if given and settings["task"] != "sft":
        raise QlbenchError(f"{where}: {', '.join(given)}: settings of task sft; task is {settings['task']!r}")
    if settings.get("assistant_only_loss") and fmt not in ("conversational", "prompt_completion"):
        raise QlbenchError(f"{where}.assistant_only_loss: needs conversational data (format conversational, or "
                           f"prompt_completion with message lists), not format {fmt}")


def check_precision(settings: dict, bits: list[int], where: str) -> None:
    """Widths that change after quantization: the fake backend only (it re-quantizes from kept weights); CPT's period
    long enough to visit every width; a switchable model evaluated only at widths it has adapters for."""
    from qlbench.study.schedules import cpt_period, cpt_width

    switch, cpt = settings["switch_bits"], settings["cpt_bits"]
    changing = settings_tree.group("precision", settings).changes
    if changing and not registry.backend(settings["backend"]).requantizes:
        raise QlbenchError(f"{where}: switch_bits, cpt_bits and eval_* need a backend that re-quantizes kept "
                           f"full-precision weights ({_requantizing()}); backend is {settings['backend']!r}")
    if switch and cpt:
        raise QlbenchError(f"{where}: switch_bits and cpt_bits exclude each other (one adapter per width, or one)")
    distils = any(k in settings for k in ("distill_alpha", "distill_temperature"))
    if (settings["switch_schedule"] == "sequential" or distils) and len(switch) < 2:
        raise QlbenchError(f"{where}: switch_schedule sequential and distill_* train switchable adapters in turn: "
                           f"switch_bits needs two widths or more (has {list(switch)})")
    if distils and settings["switch_schedule"] != "sequential":
        raise QlbenchError(f"{where}: distill_alpha and distill_temperature are sequential training's "
                           f"(switch_schedule: sequential), not {settings['switch_schedule']!r}")
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


def _simulated() -> str:
    """Where the widths a backend lacks can be had: the fake backend's, as it declares them."""
    return f"the 'fake' backend simulates {registry.span(registry.backend('fake').widths['int'])}"


def _requantizing() -> str:
    return ", ".join(repr(n) for n, b in registry.backends().items() if b.requantizes)


def parse_override(text: str) -> tuple[str, object]:
    """`KEY=VALUE` from `--set`, VALUE read as YAML (so 8 is an int, [c_attn] a list, true a bool)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise QlbenchError(f"--set {text!r}: use KEY=VALUE")
    if key not in settings_tree.SPECS:
        names = ", ".join(sorted(settings_tree.SPECS))
        raise QlbenchError(f"--set {key}: unknown setting (n_train is --n-train); settings: {names}")
    return key, as_number(key, yaml.safe_load(value))


# YAML 1.1 (PyYAML, Snakemake's loader) reads `1e-3` as a string: a float needs a dot there (`1.0e-3`). YAML 1.2 and
# every ML config a user copies from write it without one, so a setting that takes a number reads it as one.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def as_number(key: str, value):
    """`value` as a float where the setting `key` takes a number and YAML 1.1 left a 1.2 float (`1e-3`) a string."""
    spec = settings_tree.SPECS.get(key)
    if spec is None or not isinstance(value, str) or not _EXPONENT_FLOAT.fullmatch(value):
        return value
    takes = [spec.schema] + list(spec.schema.get("oneOf", []))
    return float(value) if any(s.get("type") == "number" for s in takes) else value


def with_numbers(config: dict) -> dict:
    """The config with each study's settings that take a number read as YAML 1.2 reads them (`as_number`); the axes
    and everything else as they are, and a malformed `studies` left for the schema to name."""
    studies = config.get("studies")
    if not isinstance(studies, dict):
        return config
    return {**config, "studies": {name: {k: as_number(k, v) for k, v in study.items()} if isinstance(study, dict)
                                  else study for name, study in studies.items()}}


def read_off(settings: dict) -> dict:
    """`compile: off` as written, not as YAML 1.1 reads it (false): one value for the tree and the identity."""
    return {**settings, "compile": "off"} if settings.get("compile") is False else settings


def cell_settings(study: Study, overrides: dict | None = None, bits: int | None = None) -> dict:
    """The study's fixed settings with `--set` overrides, re-validated against the schema and, for the backend,
    against the one cell's `bits` when given (a 4-bit cell may use bnb though the study also has 3-bit cells)."""
    settings = read_off({**study.settings, **(overrides or {})})
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
    identity = settings_tree.identity(settings)  # planted trouble (`testing`) changes no number
    identity["targets"] = settings["targets"] or targets.DEFAULT_TARGETS[spec["arch"]]
    if settings.get("task") == "sft":  # the chat template's text is part of what an sft cell computes
        from qlbench.study import chat_template

        identity["chat_template"] = chat_template.identity(spec, resources_root(study.config), cell.model,
                                                           settings.get("template", "auto"))
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
