"""A model and a per-layer plan of GGUF types written as a real `.gguf` file: llama.cpp's tensor names and metadata
(gguf-py's `GGUFWriter` and `TensorNameMap`), the tokenizer in the file (`tokenizer.ggml.*`, byte-level BPE: what
transformers' GGUF loader builds a tokenizer from), each planned linear quantized by gguf-py in its type
(`qlbench.quant.gguf.quantized`: llama.cpp's fallback included, so the file holds the type each layer really got),
every other tensor (embeddings, norms, biases, unplanned linears) in F32 — as the measurement that the file's eval
loss is checked against had them.

Architectures: GPT-2 (its Conv1D weights transposed to (out, in) as llama.cpp's converter does; transformers
transposes them back) and Llama (q and k rows permuted as llama.cpp's converter does; rows are permuted whole, so
each row's blocks and so the dequantized values are the unpermuted ones'). Others are refused in one line.
`AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` loads it, each tensor dequantized by its own type.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlbench.errors import QlbenchError

ARCHS = ("gpt2", "llama")
GPT2_TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def permute(w, n_head: int):
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` of q (n_head) or k (n_head_kv) rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _metadata(writer, cfg, arch: str) -> None:
    if arch == "gpt2":
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)


def _tokenizer(writer, tokenizer) -> None:
    """A byte-level BPE tokenizer (GPT-2's kind, qlbench's own bases') as llama.cpp's `gpt2` tokenizer model."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE":
        raise QlbenchError(f"GGUF export: a {model.get('type')} tokenizer (only byte-level BPE is written)")
    vocab = {**model["vocab"], **{t.content: i for t, i in ((t, i) for i, t in tokenizer.added_tokens_decoder.items())}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # llama.cpp's CONTROL / NORMAL
    writer.add_token_merges(merges)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id" if key != "pad" else "add_pad_token_id")(token_id)


def write(model, tokenizer, types: dict[str, str], path: Path, name: str = "") -> dict[str, str]:
    """`model` (a float HF causal LM, GPT-2 or Llama) with each module of `types` (module -> GGUF type) quantized
    to it, written to `path`; returns module -> the type its weight really got (llama.cpp's fallback applied)."""
    import gguf
    import torch

    from qlbench.quant.gguf import quantized
    from qlbench.results import atomic_path

    cfg = model.config
    arch = cfg.model_type
    if arch not in ARCHS:
        raise QlbenchError(f"GGUF export: {arch!r} models are not written (architectures: {', '.join(ARCHS)})")
    n_layer = cfg.n_layer if arch == "gpt2" else cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    tied = bool(getattr(cfg, "tie_word_embeddings", True))
    got = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name or arch)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)  # mixed: each tensor carries its own type
        _metadata(writer, cfg, arch)
        _tokenizer(writer, tokenizer)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                if key == "lm_head.weight" and tied:
                    continue  # the token embedding, as llama.cpp writes a tied model
                target = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if target is None:
                    continue  # buffers llama.cpp does not keep (GPT-2's causal mask)
                w = tensor.detach().float().cpu()
                if arch == "gpt2" and key.endswith(GPT2_TRANSPOSED):
                    w = w.t().contiguous()
                if arch == "llama" and key.endswith("self_attn.q_proj.weight"):
                    w = permute(w, cfg.num_attention_heads)
                if arch == "llama" and key.endswith("self_attn.k_proj.weight"):
                    w = permute(w, cfg.num_key_value_heads)
                module = key.removesuffix(".weight")
                if key.endswith(".weight") and module in types:
                    data, _, got[module] = quantized(w, types[module])
                    writer.add_tensor(target, data, raw_dtype=gguf.GGMLQuantizationType[got[module]])
                else:
                    writer.add_tensor(target, w.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    missing = sorted(set(types) - set(got))
    if missing:
        raise QlbenchError(f"GGUF export: the model has no {missing[0]} ({len(missing)} planned layers missing)")
    return got


def load(path: Path):
    """The written file as transformers loads it: (model in float32, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    extra = {}
    if "gpt2.context_length" in (fields := gguf_fields(path)):
        # transformers 5.24's GGUF loader maps gpt2.context_length to n_ctx, not n_positions (the position table's
        # size, 1024 by default): a GPT-2 of another context fails to load unless it is given
        extra["n_positions"] = fields["gpt2.context_length"]
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32", **extra)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def gguf_fields(path: Path) -> dict:
    """The file's scalar metadata (gguf-py's reader): key -> value."""
    import gguf

    out = {}
    for key, f in gguf.GGUFReader(str(path)).fields.items():
        if len(f.types) == 1 and f.types[0] != gguf.GGUFValueType.STRING and len(f.data) == 1:
            out[key] = f.parts[f.data[0]].tolist()[0]
    return out


def stored_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> its stored type, as the file says (gguf-py's reader)."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def tensor_name(model_type: str, n_layer: int, module: str) -> str:
    """A module's weight's GGUF name."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[model_type.upper()], n_layer)
    return names.get_name(module + ".weight", try_suffixes=(".weight",))


def cell_types(settings, plan: dict[str, int], lay, wanted: str | None = None) -> tuple[dict[str, str], str | None]:
    """A cell's GGUF types per module and the row column measured in them: its `deploy` format that names gguf
    (`wanted`, its label, where it has several; `deployed_eval_loss[@NAME]`), else its own plan in its backend's
    types when that backend is gguf (`merged_requant_eval_loss`), else its plan's widths in gguf's types, with no
    measured column (None)."""
    from qlbench.quant.gguf import type_for
    from qlbench.study import deploy

    value = settings.quant.deploy
    found = [d for d in deploy.parse_all(value) if d.backend == "gguf" and wanted in (None, d.label)]
    if wanted is not None and not found:
        raise QlbenchError(f"--deploy {wanted!r}: not one of the cell's gguf deploy formats "
                           f"({', '.join(d.label for d in deploy.parse_all(value)) or 'none'})")
    if len(found) > 1:
        raise QlbenchError(f"the cell deploys in {len(found)} gguf formats: choose one with --deploy "
                           f"({', '.join(d.label for d in found)})")
    sym = settings.quant.symmetric
    if found:
        target = found[0]
        return ({m: kind or type_for(b, sym) for m, (b, kind) in target.choices(plan, lay).items()},
                "deployed_eval_loss" + deploy.suffix(value, target))
    types = {m: type_for(b, sym) for m, b in plan.items()}
    return types, "merged_requant_eval_loss" if settings.quant.backend == "gguf" else None


def export(study, folder: Path, row: dict | None = None, cell=None, deploy: str | None = None,
           base=None) -> list[str]:
    """`qlbench export --format gguf`: a recommendation row's widths on the base, or (`cell`: a rebuilt cell,
    `qlbench.cell.rebuild.CellModel`) one finished cell's merged model in its GGUF types, written to `folder`; each
    tensor's stored type is checked against the plan, and the file loaded back by transformers is scored beside the
    measured loss: the cell's column, or for a recommendation (`base`: `qlbench.cell.rebuild.base_for`) the base in
    the same types by qlbench's gguf backend, as a `backend: gguf` cell measures it before LoRA. `deploy`: which of
    the cell's deploy formats, where it has several. Returns the lines to print."""
    from collections import Counter

    from qlbench.quant.gguf import type_for

    cm = cell
    if cm is not None:
        lay, spec = cm.ctx.layout, cm.ctx.spec
        types, column = cell_types(cm.ctx.settings, cm.plan, lay, deploy)
        model, tokenizer, stem = cm.merged, cm.base.tokenizer, cm.ctx.cell.path.replace("/", "_")
        stem += f"_{deploy.rpartition(':')[2]}" if deploy else ""  # one file per deploy format of a sweep
    else:
        from qlbench.data import models
        from qlbench.export.recommendation import file_name, widths

        lay, spec = study.layout(row["model"]), study.model(row["model"])
        planned = widths(row, lay, study.tree.quant.high_bits)
        types = {m: type_for(w, study.tree.quant.symmetric) for m, w in planned.items() if w < 16}
        model, tokenizer = ((base.merged, base.base.tokenizer) if base is not None
                            else models.load(spec, row["model"], study.resources))
        column, stem = None, file_name(row)
    path = folder / f"gguf_{stem}.gguf"
    got = write(model, tokenizer, types, path, name=f"{study.name}/{stem}")
    stored = stored_types(path)
    arch = model.config.model_type
    wrong = {m: (t, stored.get(tensor_name(arch, lay.n_layer, m))) for m, t in got.items()
             if stored.get(tensor_name(arch, lay.n_layer, m)) != t}
    if wrong:
        raise QlbenchError(f"{path}: stored types differ from the plan: {wrong}")
    counts = ", ".join(f"{t} x{n}" for t, n in sorted(Counter(got.values()).items()))
    lines = [f"{path}: {len(got)} of {len(lay.all_names())} linears in GGUF types ({counts}), the rest F32; "
             f"load with AutoModelForCausalLM.from_pretrained({str(path.parent)!r}, gguf_file={path.name!r})"]
    scored = cell if cell is not None else base
    if scored is None:
        return lines
    if cell is not None:
        measured = f"the cell's {column}: {cm.row.get(column):.6f}" if column in cm.row else (
            "no column of the cell measured these types (set deploy: gguf... or backend: gguf)")
    else:  # the recommendation, measured the way a cell of the gguf backend measures its base
        import copy

        from qlbench.quant import gguf as backend

        ours = copy.deepcopy(model)
        backend.deploy(ours, {m: (planned[m], t) for m, t in types.items()}, base.ctx.settings)
        measured = (f"the base in these types by qlbench's gguf backend, as a cell measures it before LoRA: "
                    f"{base.eval_loss(ours):.6f}")
    loaded, _ = load(path)
    lines.append(f"eval loss of the file as transformers loads it: {scored.eval_loss(loaded):.6f} ({measured})")
    return lines
