"""Every setting of a cell, once: its name, type, default, allowed values (a JSON-schema fragment), description, and
whether it belongs to the cell's identity — and the typed, frozen tree a cell's stages read.

A study's config names settings flat (`steps: 40`, `backend: bnb`), as users write them; here each flat name is a
field of one group (`train.steps`, `quant.backend`), and each stage takes the group it uses. From this one table
come the study schema's settings (`config.schema.yaml` holds the axes, models and datasets), `qlbench settings`,
`qlbench run --help`, the defaults, the identity (`testing` changes no number, so it stays out of the hash by
type) and the settings a cell's tokenized data depends on.

Why dataclasses and not pydantic: the study's config is already validated by its JSON schema before a tree is
built, so the tree needs no validation of its own; frozen dataclasses import in microseconds (every cell and every
`qlbench` command builds one) and add no dependency.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from qlbench.study.targets import PRESET_NAMES
from qlbench.study.deploy import SCHEMA as _DEPLOY

REQUIRED = dataclasses.MISSING  # a setting every study must give (its dataset)


def setting(default: Any, doc: str, schema: dict, *, key: str | None = None, optional: bool = False,
            data: bool | None = None):
    """A field of the tree. `key`: its flat name in the config (default: the field's name); `optional`: absent from a
    cell's settings unless the study gives it (so the identities of studies without it stay as they were);
    `data`: whether a task's `prepare` may read it (a cell's tokenized data is cached by those settings); unset: no
    for the groups in DATA_BLIND_GROUPS, yes for every other (a setting added there is in the cache key unless
    marked: a needless cache miss costs a second, a wrong hit the numbers)."""
    meta = {"doc": doc, "schema": schema, "key": key, "optional": optional, "data": data}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: _frozen(d), metadata=meta)
    return field(default=default, metadata=meta)


def _frozen(value):
    """Lists become tuples and mappings read-only, all the way down: a frozen tree holds nothing mutable."""
    if isinstance(value, dict):
        return types.MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def thawed(value):
    """The plain (JSON) form of a frozen value."""
    if isinstance(value, types.MappingProxyType):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    return value


# widths: `$defs` of the study schema that qlbench.study.config.schema() fills from the backends' declarations
_BITS = {"$ref": "#/$defs/bits"}  # a width qlbench simulates (the re-quantizing backends'), or 16
_WIDTH = {"$ref": "#/$defs/width"}  # a width qlbench simulates: what a quantized model may switch to
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# `base_dtype: auto`, by where the cell runs: a real 16-bit reference on a GPU (as QLoRA's), float32 on a CPU (where
# bf16 matmuls are slow)
AUTO_BASE_DTYPE = {"gpu": "bfloat16", "cpu": "float32"}


@dataclass(frozen=True)
class Scan:
    """QaLoF's layer-wise scan of a trained model: every module at `rest`, one block or module at a time at `bits`."""
    each: str
    bits: int
    rest: int


@dataclass(frozen=True)
class Quant:
    """How the base (or the adapters) are quantized."""
    format: str = setting("int", "int: min-max per output channel; nf: normal-float blockwise absmax; fp: FP4",
                          {"enum": ["int", "nf", "fp"]})
    backend: str = setting("fake", "the quantizer (`qlbench settings` lists each backend's formats and widths)",
                           {"$backends": True})
    symmetric: bool = setting(True, "int: a symmetric grid around zero (else min-max with a zero point)",
                              {"type": "boolean"})
    group_size: int | None = setting(None, "block size for nf/fp, or int groups (0 or unset: per output channel for "
                                           "int, 64 for nf/fp)", {"type": "integer", "minimum": 0})
    double_quant: bool = setting(False, "quantize the block scales again (QLoRA's double quantization)",
                                 {"type": "boolean"})
    hqq_axis: int = setting(1, "hqq: the axis its groups run along (1: the input dimension, hqq's default; 0: the "
                               "output dimension)", {"enum": [0, 1]}, optional=True)
    high_bits: int = setting(16, "bit width of the layers outside the mask", {"enum": [16, 8]})
    adapter_bits: int = setting(16, "bit width of LoRA's A and B (16: not quantized)", _BITS)
    bits_target: str = setting("base", "what `bits` quantizes: the base's masked layers, or LoRA's A and B (the "
                                       "bounds study's noise model)", {"enum": ["base", "adapter"]})
    act_bits: int | str = setting(16, "per-token activation quantization of quantized linears' inputs (16: off; "
                                      "follow: each layer's own width, QaLoF)",
                                  {"oneOf": [_BITS, {"const": "follow"}]})
    kv_bits: int | str = setting(16, "per-token quantization of attention keys and values (16: off; follow: their "
                                     "projection's width)", {"oneOf": [_BITS, {"const": "follow"}]})
    layer_bits: Mapping[str, int] = setting(
        {}, "{mask: bits}: widths pinned per layer on top of the cell's mask (QaLoF's per-layer bit map)",
        {"type": "object", "additionalProperties": _BITS})
    deploy: Any = setting(None, "a serving format the merged model is also requantized in (deployed_eval_* "
                                "columns): BACKEND:PRESET (gguf:Q4_0, compressed_tensors:w4a16), a bare BACKEND (each "
                                "layer at its width's type), {format: ..., layers: {mask: preset}}, or a list of names "
                                "(a sweep: columns suffixed @NAME) (unset: none)",
                          _DEPLOY, optional=True, data=False)


@dataclass(frozen=True)
class Precision:
    """Widths that change after quantization (QaLoF): switchable adapters, cyclic precision training, evaluation of
    the trained model at other widths."""
    switch_bits: tuple[int, ...] = setting(
        [], "QaLoF switchable precision: widths the masked layers switch between, one LoRA adapter each ([]: off)",
        {"type": "array", "items": _WIDTH, "uniqueItems": True})
    switch_schedule: str = setting(
        "cyclic", "switchable: the width of each step, in turn (cyclic) or drawn (random); or QaLoF's sequential: "
                  "each width's adapter for the full steps in turn, highest first, lower ones distilled from the next "
                  "higher", {"enum": ["cyclic", "random", "sequential"]})
    distill_alpha: float = setting(0.5, "sequential switchable: weight of the cascade distillation term against the "
                                        "task loss (QaLoF: 0.5)", {"type": "number", "minimum": 0, "maximum": 1},
                                   optional=True, data=False)
    distill_temperature: float = setting(2.0, "sequential switchable: the distillation's softmax temperature "
                                              "(QaLoF: 2)", {"type": "number", "exclusiveMinimum": 0},
                                         optional=True, data=False)
    cpt_bits: tuple[int, ...] = setting(
        [], "cyclic precision training (CPT): [low, high]; one adapter, the masked layers' width cycling between "
            "them ([]: off)", {"type": "array", "items": _WIDTH, "anyOf": [{"maxItems": 0}, {"minItems": 2, "maxItems": 2}]})
    cpt_cycles: int = setting(32, "CPT: periods over the run (QaLoF's num_cyclic_period: 32)",
                              {"type": "integer", "minimum": 1})
    cpt_schedule: str = setting("cosine", "CPT: the width's shape within a period",
                                {"enum": ["cosine", "triangular"]})
    eval_bits: tuple[int, ...] = setting(
        [], "widths the trained model's masked layers are evaluated at without retraining ([]: the switchable "
            "widths, or CPT's range)", {"type": "array", "items": _WIDTH, "uniqueItems": True})
    eval_maps: Mapping[str, Mapping[str, int]] = setting(
        {}, "{label: {mask: bits}}: per-layer maps the trained model is evaluated on (QaLoF's hybrid), applied in "
            "order over the cell's own widths (unlisted layers: high_bits)",
        {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _BITS}})
    eval_scan: Scan | None = setting(
        None, "QaLoF's layer-wise scan of the trained model: every module at `rest`, one block or module at `bits`",
        {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": False,
                                      "required": ["each", "bits", "rest"],
                                      "properties": {"each": {"enum": ["block", "module"]}, "bits": _WIDTH,
                                                     "rest": _BITS}}]})

    @property
    def trains_switching(self) -> bool:
        """Does training change the masked layers' width step by step (switchable adapters or CPT)?"""
        return bool(self.switch_bits or self.cpt_bits)

    @property
    def eval_widths(self) -> list[int]:
        """The widths a trained model's masked layers are evaluated at: `eval_bits`, else the switchable widths, else
        every integer width between CPT's bounds."""
        if self.eval_bits or self.switch_bits:
            return list(self.eval_bits or self.switch_bits)
        if self.cpt_bits:
            low, high = self.cpt_bits
            return list(range(low, high + 1))
        return []

    @property
    def changes(self) -> bool:
        """Do any widths change after quantization — in training, or when the trained model is evaluated?"""
        return self.trains_switching or bool(self.eval_bits or self.eval_maps or self.eval_scan)


@dataclass(frozen=True)
class Lora:
    """The adapters: where they go and how they scale."""
    targets: Any = setting(None, "LoRA targets: a preset (qv, kv, attn, attn_mlp), or module names; `c_attn[q,v]` "
                                 "adapts only those slices of GPT-2's fused QKV; {each: [presets]} makes them an axis "
                                 "(unset: the architecture's attention input projection)",
                           {"oneOf": [{"enum": list(PRESET_NAMES)},
                                      {"type": "array", "minItems": 1,
                                       "items": {"type": "string",
                                                 "pattern": "^[A-Za-z0-9_.]+(\\[[qkv](,[qkv])*\\])?$"}},
                                      {"type": "object", "additionalProperties": False, "required": ["each"],
                                       "properties": {"each": {"type": "array", "minItems": 1, "uniqueItems": True,
                                                               "items": {"enum": list(PRESET_NAMES)}}}}]})
    alpha: float | str = setting("2r", "LoRA's alpha: a number, or a multiple of the rank (`2r`)",
                                 {"oneOf": [{"type": "number", "exclusiveMinimum": 0},
                                            {"type": "string", "pattern": "^[0-9]*\\.?[0-9]*r$"}]},
                                 key="lora_alpha")
    dropout: float = setting(0.0, "dropout on LoRA's input", {"type": "number", "minimum": 0, "maximum": 1},
                             key="lora_dropout")
    init: str = setting("default", "how the adapters start: default (peft's: A random, B zero, so the model is the "
                                   "quantized base) or loftq (LoftQ: B·A fitted by alternating SVD to what "
                                   "quantization took from each quantized target's weight, the base quantized "
                                   "again around it by the cell's own backend)",
                        {"enum": ["default", "loftq"]}, key="lora_init", optional=True)
    loftq_iter: int = setting(1, "loftq: alternating rounds of quantize and SVD (LoftQ's T; peft's default 1)",
                              {"type": "integer", "minimum": 1}, optional=True)


@dataclass(frozen=True)
class Train:
    """The training loop."""
    steps: int = setting(40, "optimizer steps", {"type": "integer", "minimum": 1}, data=False)
    lr: float = setting(2e-3, "peak learning rate", {"type": "number", "exclusiveMinimum": 0}, data=False)
    warmup: float = setting(0.1, "fraction of the steps with a linear warm-up (then cosine decay)",
                            {"type": "number", "minimum": 0, "maximum": 1}, data=False)
    weight_decay: float = setting(0.0, "AdamW's weight decay", {"type": "number", "minimum": 0}, data=False)
    optimizer: str = setting("adamw", "torch AdamW, or bitsandbytes' paged AdamW (QLoRA)",
                             {"enum": ["adamw", "paged_adamw", "paged_adamw_8bit"]}, data=False)
    grad_clip: float = setting(1.0, "gradient-norm clip (0: none)", {"type": "number", "minimum": 0}, data=False)
    batch_size: int = setting(16, "examples per step (and per evaluation batch)", {"type": "integer", "minimum": 1})
    seq_len: int = setting(128, "tokens per example (task sft: max_length, the most tokens of an example and of a packed row)", {"type": "integer", "minimum": 8})
    checkpoint_every: int = setting(0, "steps between checkpoints a killed cell resumes from (0: none)",
                                    {"type": "integer", "minimum": 0}, data=False)


@dataclass(frozen=True)
class Eval:
    """What is measured besides the training curve."""
    eval_batches: int | None = setting(None, "evaluate on the first N batches of the held-out set (unset: all)",
                                       {"type": "integer", "minimum": 1})
    probe_bits: int = setting(0, "reference cells estimate per-module sensitivity (Fisher x noise) at this width "
                                 "(0: off)", {"oneOf": [{"const": 0}, _WIDTH]}, data=False)
    probe_batches: int = setting(4, "batches the sensitivity probe reads", {"type": "integer", "minimum": 1}, data=False)
    grad_var_points: int = setting(0, "training steps at which the gradient variance is measured (0: none)",
                                   {"type": "integer", "minimum": 0}, data=False)


# the robustness study's precisions: the attacked model, PTQ at 8 / 4 bits per backend, random precision inference
ROBUST_PRECISIONS = ("fp32", "fake8", "fake4", "bnb8", "bnb4", "random")


@dataclass(frozen=True)
class Attack:
    """GBDA's settings (`robustness: {attack: ...}`): the defaults of Guo et al. 2021's code
    (facebookresearch/text-adversarial-attack, whitebox_attack.py)."""
    steps: int = setting(100, "Adam steps per text", {"type": "integer", "minimum": 1})
    lr: float = setting(0.3, "Adam's learning rate", {"type": "number", "exclusiveMinimum": 0})
    batch: int = setting(10, "Gumbel-softmax samples per step", {"type": "integer", "minimum": 1})
    init_coeff: float = setting(15.0, "initial logit of each clean token", {"type": "number"})
    kappa: float = setting(5.0, "Carlini-Wagner margin", {"type": "number", "minimum": 0})
    lam_sim: float = setting(1.0, "weight of the similarity (BERTScore) term", {"type": "number", "minimum": 0})
    lam_perp: float = setting(1.0, "weight of the fluency (causal LM NLL) term", {"type": "number", "minimum": 0})
    embed_layer: int = setting(-1, "hidden layer of the causal LM for the similarity", {"type": "integer"})
    samples: int = setting(100, "hard texts drawn at the end; the first misclassified one is kept",
                           {"type": "integer", "minimum": 1})
    group: int = setting(16, "equal-length texts attacked at once", {"type": "integer", "minimum": 1})
    hold_ends: bool = setting(True, "the first and last positions keep their clean tokens (the paper's code)",
                              {"type": "boolean"})


@dataclass(frozen=True)
class Robustness:
    """QaLoF's GBDA experiment (a study's `robustness:` mapping; task classification): what is attacked, at which
    precisions it is evaluated, and what counts as an attack."""
    examples: int = setting(32, "held-out texts attacked per cell", {"type": "integer", "minimum": 1})
    precisions: tuple[str, ...] = setting(
        list(ROBUST_PRECISIONS), "the precisions each cell is evaluated at: fp32, PTQ at 8 / 4 bits (fake int or "
                                 "bitsandbytes), random precision inference",
        {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(ROBUST_PRECISIONS)}})
    attacked: tuple[str, ...] = setting(
        ["fp32", "fake8", "fake4", "random"], "the precisions GBDA attacks white-box; fp32's texts are replayed at "
                                              "every precision, each other's evaluated at its own",
        {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(ROBUST_PRECISIONS)}})
    random_widths: tuple[int, ...] = setting(
        [4, 6, 8], "random precision inference: a width drawn from these per forward pass",
        {"type": "array", "items": _WIDTH, "minItems": 2, "uniqueItems": True})
    similarity_threshold: float = setting(
        0.5, "a hard text counts as an attack only if its BERTScore (rescaled: 0 unrelated, 1 the clean text) is at "
             "least this", {"type": "number", "maximum": 1})
    attack: Attack = setting(Attack(), "GBDA's settings (Guo et al. 2021's code defaults when left out)",
                             {"$ref": "#/$defs/attack"})


@dataclass(frozen=True)
class Data:
    """What the cell learns from."""
    dataset: str = setting(REQUIRED, "the dataset's name in the config's `datasets`", {"type": "string"})
    task: str = setting("causal_lm", "what a cell trains and measures (`qlbench settings` lists the tasks)",
                        {"$tasks": True})
    robustness: Robustness | None = setting(
        None, "QaLoF's GBDA experiment (task classification): attack each 16-bit cell once, evaluate it at each "
              "precision", {"$ref": "#/$defs/robustness"}, optional=True)


@dataclass(frozen=True)
class Sft:
    """Task sft (qlbench.tasks.sft): how examples become tokens and labels, as TRL's SFTTrainer makes them. An
    example's max_length is the cell's seq_len."""
    template: str = setting("auto", "the chat template conversations and message-list prompts are rendered with: "
                                    "auto (the tokenizer's own, else qlbench's ChatML), model (the tokenizer's own; a "
                                    "tokenizer without one is refused), chatml", {"enum": ["auto", "model", "chatml"]},
                            optional=True)
    completion_only_loss: bool | None = setting(
        None, "prompt-completion data: the loss on the completion only (unset: on, TRL's default)",
        {"type": ["boolean", "null"]}, optional=True)
    assistant_only_loss: bool = setting(False, "conversational data: the loss on the assistant turns only (their "
                                               "{% generation %} spans: qlbench's ChatML has them)",
                                        {"type": "boolean"}, optional=True)
    truncation: bool = setting(False, "cut an example longer than seq_len to its first seq_len tokens (off: such an "
                                      "example is refused in one line naming its file and line)",
                               {"type": "boolean"}, optional=True)
    packing: bool = setting(True, "examples packed into rows of seq_len, each attending to itself only (off: one "
                                  "example a row, padded)", {"type": "boolean"}, optional=True)


@dataclass(frozen=True)
class Runtime:
    """Where and in what arithmetic a cell runs."""
    compute_dtype: str = setting("float32", "the dtype of the forward pass (autocast; float32: none)",
                                 {"enum": ["float32", "bfloat16", "float16"]})
    base_dtype: str = setting("auto", f"the base's weights as loaded; auto: {AUTO_BASE_DTYPE['gpu']} on a GPU, "
                                      f"{AUTO_BASE_DTYPE['cpu']} on a CPU",
                              {"enum": ["auto", "float32", "bfloat16", "float16"]})
    device: str = setting("auto", "auto: a GPU where one is visible, else the CPU", {"enum": ["auto", "cpu", "cuda"]})
    gpus: int = setting(0, "GPUs a cell asks the cluster for", {"type": "integer", "minimum": 0})
    compile: str = setting("off", "torch.compile the training step's forward and loss: off, or a mode of "
                                  "torch.compile (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs); "
                                  "the row's compile_s is the compilation's cost, apart from step_time_s",
                           {"enum": [False, *COMPILE_MODES]}, optional=True)  # YAML 1.1 reads `off` as false
    loss_kernel: str = setting("standard", "the training step's loss: standard (the model's logits, then the "
                                           "cross-entropy), or chunked (a causal LM's head and cross-entropy a chunk "
                                           "of tokens at a time, never all the logits at once: less memory, the same "
                                           "loss rounded in another order)",
                               {"enum": ["standard", "chunked"]}, optional=True)


@dataclass(frozen=True)
class Testing:
    """Planted trouble for the tests: it changes no number, so it is never part of a cell's identity."""
    fail: Any = setting(None, "testing only: first, always, kill@STEP or mem@MB, optionally :CELL-PATTERN "
                              "(qlbench.study.fail)", {"oneOf": [{"type": "string"},
                                                                 {"type": "array", "items": {"type": "string"}}]})


NOT_IDENTITY = ("testing",)  # groups that change no number
DATA_BLIND_GROUPS = ("quant", "precision", "lora", "runtime", "testing")  # read after the data is made, never by it


@dataclass(frozen=True)
class Settings:
    """A cell's settings, typed and frozen; each stage reads its group."""
    data: Data
    quant: Quant = field(default_factory=Quant)
    precision: Precision = field(default_factory=Precision)
    lora: Lora = field(default_factory=Lora)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    sft: Sft = field(default_factory=Sft)
    runtime: Runtime = field(default_factory=Runtime)
    testing: Testing = field(default_factory=Testing)

    def replace(self, **flat) -> "Settings":
        """A copy with some settings changed, by their flat names (`replace(backend="fake")`)."""
        groups: dict[str, dict] = {}
        for key, value in flat.items():
            spec = SPECS[key]
            groups.setdefault(spec.group, {})[spec.field] = _typed(spec, value)
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **v) for g, v in groups.items()})

    def value(self, key: str):
        """One setting by its flat name (for tables and messages; stages read their group)."""
        spec = SPECS[key]
        return getattr(getattr(self, spec.group), spec.field)


@dataclass(frozen=True)
class Spec:
    key: str  # the flat name in the config
    group: str
    field: str
    type: str
    default: Any  # REQUIRED when a study must give it
    doc: str
    schema: dict
    identity: bool
    optional: bool
    data: bool


def _specs() -> dict[str, Spec]:
    out = {}
    for group in dataclasses.fields(Settings):
        for f in dataclasses.fields(GROUPS[group.name]):
            m = f.metadata
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            key = m["key"] or f.name
            data = m["data"] if m["data"] is not None else group.name not in DATA_BLIND_GROUPS
            out[key] = Spec(key, group.name, f.name, str(f.type), default, m["doc"], m["schema"],
                            group.name not in NOT_IDENTITY, m["optional"], data)
    return out


GROUPS = {"data": Data, "quant": Quant, "precision": Precision, "lora": Lora, "train": Train, "eval": Eval,
          "sft": Sft, "runtime": Runtime, "testing": Testing}
SPECS: dict[str, Spec] = _specs()


def _typed(spec: Spec, value):
    if spec.key == "eval_scan" and isinstance(value, dict):
        return Scan(**value)
    if spec.key == "robustness" and isinstance(value, Mapping):
        return robustness(value)
    return _frozen(value)


def robustness(mapping: Mapping) -> Robustness:
    """A study's `robustness:` mapping, typed: what it leaves out at Robustness's (and Attack's) defaults."""
    return Robustness(**{k: Attack(**v) if k == "attack" else _frozen(v) for k, v in mapping.items()})


def base_dtype(setting: str, gpu: bool) -> str:
    """The dtype a cell's base is loaded in: `base_dtype` as set, or for `auto` AUTO_BASE_DTYPE's by where it ran."""
    return AUTO_BASE_DTYPE["gpu" if gpu else "cpu"] if setting == "auto" else setting


def defaults() -> dict:
    """The flat settings a study may leave out, with their defaults (plain lists and dicts: a fresh copy each call)."""
    return {k: thawed(s.default) for k, s in SPECS.items() if s.default is not REQUIRED and not s.optional}


def build(flat: dict) -> Settings:
    """The tree of a cell's flat settings (a validated study's, defaults filled in)."""
    unknown = set(flat) - set(SPECS)
    if unknown:
        raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
    groups: dict[str, dict] = {g: {} for g in GROUPS}
    for key, value in flat.items():
        spec = SPECS[key]
        groups[spec.group][spec.field] = _typed(spec, value)
    return Settings(**{g: GROUPS[g](**v) for g, v in groups.items()})


def group(name: str, flat: dict):
    """One group of the tree from those of `flat`'s settings that belong to it (the rest at their defaults)."""
    fields = {s.field: _typed(s, flat[k]) for k, s in SPECS.items() if s.group == name and k in flat}
    return GROUPS[name](**fields)


def tree(**flat) -> Settings:
    """The defaults with these settings changed, as a tree (for tests and notebooks: a study's cells build theirs
    from its config)."""
    return build({**defaults(), "dataset": "(none)", **flat})


def identity(flat: dict) -> dict:
    """The settings that determine a cell's numbers: all but the `testing` group's, and an optional setting only
    where it differs from its default (`compile: off` is the cell it was before the setting existed)."""
    return {k: v for k, v in flat.items()
            if SPECS[k].identity and not (SPECS[k].optional and v == thawed(SPECS[k].default))}


def data_blind_keys() -> set[str]:
    """The settings a cell's tokenized data cannot depend on (any other key, known or not, is in its cache key)."""
    return {k for k, s in SPECS.items() if not s.data}


def _object_schema(cls, description: str) -> dict:
    """The JSON schema of a mapping whose keys are `cls`'s fields, each with its description and default."""
    props = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = f" (default {_shown(default)})" if not dataclasses.is_dataclass(default) else ""
        props[f.name] = {**f.metadata["schema"], "description": f.metadata["doc"] + shown}
    return {"type": "object", "additionalProperties": False, "description": description, "properties": props}


def _shown(value) -> str:
    value = thawed(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def robustness_defs() -> dict:
    """The `$defs` of the `robustness:` mapping and its `attack:` (from Robustness and Attack, defaults named)."""
    return {"robustness": _object_schema(Robustness, " ".join(Robustness.__doc__.split())),
            "attack": _object_schema(Attack, " ".join(Attack.__doc__.split()))}


def schema_properties(backends: list[str], tasks: list[str]) -> dict:
    """The JSON-schema properties of every setting, descriptions included, for a study's schema."""
    out = {}
    for key, spec in SPECS.items():
        fragment = dict(spec.schema)
        if fragment.pop("$backends", False):
            fragment["enum"] = backends
        if fragment.pop("$tasks", False):
            fragment["enum"] = tasks
        out[key] = {**fragment, "description": spec.doc}
    return out
