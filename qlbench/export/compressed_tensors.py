"""A model and a plan (module -> width) written as a compressed-tensors folder that vLLM, SGLang and transformers load.

compressed-tensors alone (no llmcompressor): one `QuantizationScheme` per width (weights only, int, the study's
symmetric and group size as `qlbench.quant.compressed_tensors` reads them), targeting its layers by their full names
(`lm_head` ignored), `apply_quantization_config`, each layer's scale and zero point set to the backend's own (min-max
through `calculate_qparams`: the codes are those a `backend: compressed_tensors` cell computed with),
`ModelCompressor.from_pretrained_model(...).compress_model`, `save_pretrained` and `update_config`: config.json gains
its `quantization_config` (format `pack-quantized`; it says `mixed-precision` when widths differ). transformers'
default load (`CompressedTensorsConfig()`) reads it back on a CPU; `dequantize=True` fails on a folder with two
widths in transformers 5.24, so load it the default way.

GPT-2 is written as OPT: the same arithmetic (pre-LayerNorm blocks, learned positions, biased linears, the same
activation; logits equal to float rounding) with `nn.Linear` (out, in) layers where GPT-2 has `Conv1D` (in, out) —
compressed-tensors quantizes only `nn.Linear` — and c_attn's rows split into q_proj, k_proj, v_proj (one scheme:
vLLM fuses them again). Not GPTBigCode (GPT-2 with Linears): its `_init_weights` reads `c_proj.weight`, which a
packed load has replaced, so transformers 5.24 cannot load it. `opt_names` maps a plan's GPT-2 names to OPT's.
"""

from __future__ import annotations

from pathlib import Path

from qlbench.errors import QlbenchError

GPT2_ONLY = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")  # GPT-2 options OPT lacks
GPT2_AS_OPT = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "attn.c_proj": ("self_attn.out_proj",), "mlp.c_fc": ("fc1",), "mlp.c_proj": ("fc2",)}
OPT_POSITION_OFFSET = 2  # OPT's learned positions start at row 2


def opt_names(name: str) -> tuple[str, ...]:
    """A GPT-2 linear's name -> the OPT linears that hold its rows (c_attn: q, k and v)."""
    block, _, rest = name.removeprefix("transformer.h.").partition(".")
    if not name.startswith("transformer.h.") or rest not in GPT2_AS_OPT:
        raise QlbenchError(f"{name}: not a GPT-2 block linear")
    return tuple(f"model.decoder.layers.{block}.{n}" for n in GPT2_AS_OPT[rest])


def as_opt(model):
    """A GPT-2 causal LM as the OPT model that computes the same: pre-LayerNorm blocks with learned positions and
    biased `nn.Linear` layers; c_attn's rows split into q, k and v (whole rows: per-row and per-group scales are
    unchanged), Conv1D weights transposed, the tied head written as its own copy."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from qlbench.quant.formats import out_in

    c = model.config
    odd = [k for k in GPT2_ONLY if getattr(c, k, False)] + (["layer_norm_epsilon"] if c.layer_norm_epsilon != 1e-5
                                                              else [])
    if odd:
        raise QlbenchError(f"GPT-2 with {', '.join(odd)} set has no OPT equivalent: no compressed-tensors export")
    e = c.n_embd
    config = OPTConfig(
        vocab_size=c.vocab_size, hidden_size=e, num_hidden_layers=c.n_layer, ffn_dim=c.n_inner or 4 * e,
        num_attention_heads=c.n_head, max_position_embeddings=c.n_positions, activation_function=c.activation_function,
        do_layer_norm_before=True, word_embed_proj_dim=e, dropout=0.0, attention_dropout=0.0, enable_bias=True,
        layer_norm_elementwise_affine=True, init_std=c.initializer_range, bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id, pad_token_id=getattr(c, "pad_token_id", None),
        tie_word_embeddings=False)  # a tied head is reported missing on a compressed load: written out instead
    dtype = next(model.parameters()).dtype
    out = OPTForCausalLM(config).to(dtype).eval()
    t, d = model.transformer, out.model.decoder
    state = {"model.decoder.embed_tokens.weight": t.wte.weight, "lm_head.weight": t.wte.weight.clone(),
             "model.decoder.embed_positions.weight": torch.cat([t.wpe.weight.new_zeros(OPT_POSITION_OFFSET, e),
                                                                 t.wpe.weight]),
             "model.decoder.final_layer_norm.weight": t.ln_f.weight, "model.decoder.final_layer_norm.bias": t.ln_f.bias}
    for i, block in enumerate(t.h):
        for a, b in (("ln_1", "self_attn_layer_norm"), ("ln_2", "final_layer_norm")):
            state |= {f"model.decoder.layers.{i}.{b}.{p}": getattr(getattr(block, a), p) for p in ("weight", "bias")}
        for rest in GPT2_AS_OPT:
            module = block.get_submodule(rest)
            rows, targets = out_in(module, module.weight), opt_names(f"transformer.h.{i}.{rest}")
            n = rows.shape[0] // len(targets)
            for j, name in enumerate(targets):
                state[f"{name}.weight"] = rows[j * n:(j + 1) * n]
                state[f"{name}.bias"] = module.bias[j * n:(j + 1) * n]
    missing, unexpected = out.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise QlbenchError(f"GPT-2 -> OPT: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return out


def linear_model(model, plan: dict[str, int]):
    """The model with `nn.Linear` layers compressed-tensors can quantize, and the plan in its names (GPT-2: as
    OPT)."""
    if model.config.model_type != "gpt2":
        return model, plan
    return as_opt(model), {n: bits for name, bits in plan.items() for n in opt_names(name)}


def quantization_config(plan: dict[str, int], quant, inputs: dict[str, int]):
    """compressed-tensors' `QuantizationConfig`: a group per width (`w4a16`, `w8a16`) targeting its layers by name."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    from qlbench.quant import compressed_tensors as backend

    groups = {}
    for name, bits in sorted(plan.items()):
        args = backend.args_for(bits, quant, inputs[name])  # one line if the group size does not divide its inputs
        groups.setdefault(f"w{bits}a16", QuantizationScheme(targets=[], weights=args)).targets.append(name)
    return QuantizationConfig(config_groups=groups, ignore=["lm_head"], quantization_status="frozen")


def write(model, plan: dict[str, int], quant, folder: Path, tokenizer=None) -> Path:
    """Write `model` (float, its weights as they are before quantization: the base, or the merged model) with the
    layers in `plan` quantized at their widths (`quant`: the study's `Quant`) as a compressed-tensors folder."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization import apply_quantization_config

    from qlbench import registry
    from qlbench.quant import compressed_tensors as backend

    allowed = registry.backend("compressed_tensors").widths["int"]
    bad = sorted({b for b in plan.values() if b not in allowed})
    if bad:
        raise QlbenchError(f"compressed-tensors' int weights here are {', '.join(map(str, allowed))} bits, not "
                           f"{', '.join(map(str, bad))}")
    model, plan = linear_model(model, plan)
    inputs = {n: model.get_submodule(n).in_features for n in plan}
    apply_quantization_config(model, quantization_config(plan, quant, inputs), show_progress=False)
    with torch.no_grad():
        for name, bits in plan.items():
            module = model.get_submodule(name)
            scale, zero = backend.qparams(module.weight, module.quantization_scheme.weights)
            update_offload_parameter(module, "weight_scale", scale.to(module.weight_scale.dtype))
            update_offload_parameter(module, "weight_zero_point", zero.to(module.weight_zero_point.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def layer_schemes(folder: Path) -> dict[str, str]:
    """Each quantized layer's scheme as the folder's config.json says: full name -> `w<bits>a16`."""
    import json

    qc = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    return {t: f"w{g['weights']['num_bits']}a16" for g in qc["config_groups"].values() for t in g["targets"]}


def loaded_schemes(model) -> dict[str, str]:
    """Each layer's scheme as transformers loaded it (its `quantization_scheme`): name -> `w<bits>a16`."""
    return {n: f"w{m.quantization_scheme.weights.num_bits}a16" for n, m in model.named_modules()
            if getattr(m, "quantization_scheme", None) is not None}


def stored_weights(folder: Path) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Each quantized layer's weight as compressed-tensors itself dequantizes what the folder stores (its format's
    compressor's `decompress` on the saved tensors, under the scheme config.json gives): name -> (out, in), float.
    Independent of transformers' loader (which cannot load asymmetric folders: see `qlbench.quant.compressed_tensors`)."""
    import json

    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    folder = Path(folder)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state |= load_file(str(f))
    out = {}
    for group in qc["config_groups"].values():
        scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
        compressor = BaseCompressor.get_value_from_registry(group.get("format") or qc["format"])
        for name in group["targets"]:
            local = {k.removeprefix(name + "."): v for k, v in state.items() if k.startswith(name + ".")}
            out[name] = compressor.decompress(local, scheme)["weight"].float()
    return out


def cell_widths(settings, plan: dict[str, int], lay, wanted: str | None = None) -> tuple[dict[str, int], str | None]:
    """A cell's compressed-tensors widths per module and the row column measured in them: its `deploy` format that
    names compressed_tensors (`wanted`, its label, where it has several; `deployed_eval_loss[@NAME]`), else its own
    plan when its backend is compressed_tensors (`merged_requant_eval_loss`), else its plan's widths with no
    measured column (None)."""
    from qlbench.quant import compressed_tensors as backend
    from qlbench.study import deploy

    value = settings.quant.deploy
    found = [d for d in deploy.parse_all(value) if d.backend == "compressed_tensors" and wanted in (None, d.label)]
    if wanted is not None and not found:
        raise QlbenchError(f"--deploy {wanted!r}: not one of the cell's compressed_tensors deploy formats "
                           f"({', '.join(d.label for d in deploy.parse_all(value)) or 'none'})")
    if len(found) > 1:
        raise QlbenchError(f"the cell deploys in {len(found)} compressed_tensors formats: choose one with --deploy "
                           f"({', '.join(d.label for d in found)})")
    if found:
        target = found[0]
        return (backend.deploy_widths(target.choices(plan, lay)),
                "deployed_eval_loss" + deploy.suffix(value, target))
    return dict(plan), "merged_requant_eval_loss" if settings.quant.backend == "compressed_tensors" else None


def folder_model(folder: Path, like):
    """The folder as a float model: transformers' default load where it can (symmetric folders), else `like` (the
    model written, in the folder's architecture: `linear_model`) with each quantized weight set to compressed-tensors'
    own decompression of what is stored. Returns (model, how)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    qc = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    if all(g["weights"]["symmetric"] for g in qc["config_groups"].values()):
        return AutoModelForCausalLM.from_pretrained(folder).eval(), "transformers' default load"
    with torch.no_grad():
        for name, w in stored_weights(folder).items():
            like.get_submodule(name).weight.copy_(w.to(like.get_submodule(name).weight.dtype))
    return like.eval(), ("compressed-tensors' own decompression (transformers 5.24 cannot load asymmetric folders: "
                         "compressed-tensors 0.20.1 leaves their zero points unpacked on the meta device)")


def export(study, folder: Path, row: dict | None = None, cell=None, deploy: str | None = None,
           base=None) -> list[str]:
    """`qlbench export --format compressed-tensors`: a recommendation row's widths on the base, or (`cell`: a rebuilt
    cell, `qlbench.cell.rebuild.CellModel`) one finished cell's merged model in its schemes, written as a folder under
    `folder`; each layer's stored scheme is checked against the plan, and the folder loaded back is scored beside the
    measured loss: the cell's column, or for a recommendation (`base`: `qlbench.cell.rebuild.base_for`) the base in
    the same schemes by qlbench's compressed_tensors backend, as a cell of that backend measures it before LoRA.
    `deploy`: which of the cell's deploy formats, where it has several. Returns the lines to print."""
    import copy
    from collections import Counter

    cm = cell
    if cm is not None:
        lay, quant = cm.ctx.layout, cm.ctx.settings.quant
        plan, column = cell_widths(cm.ctx.settings, cm.plan, lay, deploy)
        model, tokenizer, stem = cm.merged, cm.base.tokenizer, cm.ctx.cell.path.replace("/", "_")
        stem += f"_{deploy.rpartition(':')[2]}" if deploy else ""
    else:
        from qlbench.data import models
        from qlbench.export.recommendation import file_name, widths

        lay, quant = study.layout(row["model"]), study.tree.quant
        plan = {m: w for m, w in widths(row, lay, quant.high_bits).items() if w < 16}
        model, tokenizer = ((base.merged, base.base.tokenizer) if base is not None
                            else models.load(study.model(row["model"]), row["model"], study.resources))
        column, stem = None, file_name(row)
    scored = cell if cell is not None else base
    like = linear_model(copy.deepcopy(model), plan)[0] if scored is not None else None  # written consumes a Llama
    if cell is None and base is not None:  # the recommendation as a cell of this backend measures its base
        from qlbench.quant import compressed_tensors as backend

        ours = copy.deepcopy(model)
        backend.apply(ours, plan, base.ctx.settings)
        measured = (f"the base in these schemes by qlbench's compressed_tensors backend, as a cell measures it "
                    f"before LoRA: {base.eval_loss(ours):.6f}")
    path = write(model, plan, quant, folder / f"ct_{stem}", tokenizer)
    names = {g: opt_names(g) if model.config.model_type == "gpt2" else (g,) for g in plan}
    expected = {n: f"w{b}a16" for g, b in plan.items() for n in names[g]}
    stored = layer_schemes(path)
    if stored != expected:
        wrong = {n: (s, stored.get(n)) for n, s in expected.items() if stored.get(n) != s}
        raise QlbenchError(f"{path}: stored schemes differ from the plan: {wrong or 'extra layers'}")
    counts = ", ".join(f"{s} x{n}" for s, n in sorted(Counter(f"w{b}a16" for b in plan.values()).items()))
    arch = " (GPT-2 written as OPT: c_attn split into q/k/v_proj)" if model.config.model_type == "gpt2" else ""
    lines = [f"{path}: {len(plan)} of {len(lay.all_names())} linears in compressed-tensors schemes ({counts}), the "
             f"rest as they are{arch}; load with AutoModelForCausalLM.from_pretrained({str(path)!r}) or vllm serve"]
    if scored is None:
        return lines
    if cell is not None:
        measured = f"the cell's {column}: {cm.row.get(column):.6f}" if column in cm.row else (
            "no column of the cell measured these schemes (set deploy: compressed_tensors... or backend: "
            "compressed_tensors)")
    loaded, how = folder_model(path, like)
    lines.append(f"eval loss of the folder ({how}): {scored.eval_loss(loaded):.6f} ({measured})")
    return lines
