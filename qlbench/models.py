"""Models and tokenizers by name from config.yaml: a base the workflow pretrains itself, a hub id, or a local folder."""

from __future__ import annotations

import os
from pathlib import Path

from qlbench.errors import QlbenchError

EOS = "<|endoftext|>"


def base_dir(resources: str, model: str) -> Path:
    """Where `qlbench prepare` caches a pretrained base (model + tokenizer)."""
    return Path(resources) / "models" / model


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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load(spec: dict, name: str, resources: str, dtype=None):
    """(model, tokenizer) for a model entry of config.yaml; fails at once, with one line, if it cannot be had."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec["source"]
    if source == "pretrain":
        where = base_dir(resources, name)
        if not (where / "config.json").exists():
            raise QlbenchError(f"model {name!r} is not prepared: run `qlbench prepare {name}` (expected {where})")
        ref, local_only = str(where), True
    elif source == "path":
        ref, local_only = spec["name"], True
        if not Path(ref).exists():
            raise QlbenchError(f"model {name!r}: no such folder {ref!r}")
    elif source == "hub":
        ref, local_only = spec["name"], _hub_offline()
    else:
        raise QlbenchError(f"model {name!r}: source {source!r} is not supported yet")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(ref, local_files_only=local_only, **kwargs)
    except OSError as e:
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if _hub_offline() else ""
        raise QlbenchError(f"model {name!r}: cannot load {ref!r}{hint}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
