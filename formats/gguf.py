"""HF → GGUF export, streamed: every tensor info is registered first (gguf's add_tensor_info, as its
gguf_new_metadata script does), then formats/gguf_stream.py converts the data in row blocks that the GGUF writer
(formats/gguf_writer.py) writes as they come, so peak memory is a few blocks whatever the model size
(bench/convert.py measures it at 1.5 and 3 GB).

Names go through gguf's own HF→GGUF tensor map, restricted to the tensors the arch really has. Archs whose
llama.cpp graph runs the NORM (interleaved-pair) rope (llama: formats/archs.py `permute_qk`) get Q/K rows permuted
from HF's rotate-half order; qwen2/qwen3/phi3 run NEOX rope and take the weights as they are. 1-D tensors (norms,
biases) stay F32, as llama.cpp's converter keeps them; q8_0 falls back to f16 for a tensor whose rows do not split
into 32-value blocks, as that converter does. The rope comes from formats/gguf_rope.py and the tokenizer from
formats/gguf_tokenizer.py. `check_gguf` refuses what cannot be written before any work; its GgufJob carries the rope
and plan to the writer, so a conversion computes them once (`--to both` checks before the HF half is written).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (GGML_QUANT_VERSION, MODEL_ARCH_NAMES, MODEL_TENSORS, GGMLQuantizationType, GGUFWriter,
                  LlamaFileType, get_tensor_name_map, quants)

from ropeconvert.convert.spec import RopeSpec
from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.archs import ARCHS
from ropeconvert.formats.config_check import GGUF_FIELDS, require
from ropeconvert.formats.gguf_rope import GgufRope, gguf_rope
from ropeconvert.formats.gguf_stream import TensorPlan, TensorStream
from ropeconvert.formats.gguf_tokenizer import TokenizerKeys, add_tokenizer, check_tokenizer_json
from ropeconvert.formats.gguf_writer import GgufExport
from ropeconvert.formats.output import check_output
from ropeconvert.formats.source import Source, resolve
from ropeconvert.formats.tensors import index_weights

Q = GGMLQuantizationType
OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32), "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_ARCH_ENUM = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}


def check_outtype(outtype: str) -> tuple[GGMLQuantizationType, LlamaFileType]:
    if outtype not in OUTTYPES:
        raise UnsupportedError(f"unknown --outtype {outtype!r}", f"choose one of: {', '.join(OUTTYPES)}")
    return OUTTYPES[outtype]


def plan_tensors(hf_dir: Path, config: dict[str, Any], arch: str, outtype: str) -> list[TensorPlan]:
    """Every weight's GGUF name, shape and type, read from the safetensors headers alone (no tensor data)."""
    qtype, _ = check_outtype(outtype)
    n_layers = int(config["num_hidden_layers"])
    arch_enum = _ARCH_ENUM[arch]
    names = get_tensor_name_map(arch_enum, n_layers)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    index = index_weights(hf_dir)
    plans = []
    for hf_name, info in index.tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by every runtime from the rope metadata
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings") and "model.embed_tokens.weight" in index.tensors:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in MODEL_TENSORS[arch_enum]:
            raise UnsupportedError(f"tensor {hf_name!r} has no place in a {arch} GGUF",
                                   "the checkpoint has layers llama.cpp's architecture lacks; export --to hf")
        shape = tuple(info.shape)
        t = Q.F32 if len(shape) == 1 else qtype
        if t == Q.Q8_0 and shape[-1] % quants.GGML_QUANT_SIZES[Q.Q8_0][0]:
            t = Q.F16  # rows must split into whole 32-value blocks
        n_head = None
        if ARCHS[arch].permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            n_head = heads
        elif ARCHS[arch].permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            n_head = kv_heads
        shift = ARCHS[arch].norm_shift if hf_name.endswith("norm.weight") else 0.0
        plans.append(TensorPlan(hf_name, found[1], shape, t, info, n_head, shift))
    if not plans:
        raise InputError(f"{hf_dir} holds no weights")
    return plans


@dataclass(frozen=True)
class GgufJob:
    """What check_gguf found writable: the rope (and, for an HF source, the config and tensor plans)."""

    rope: GgufRope
    config: dict[str, Any] | None = None
    plans: tuple[TensorPlan, ...] = ()


def check_gguf(source: Source, spec: RopeSpec, out: Path | None, *, outtype: str | None = None, static: bool = False,
               force: bool = False) -> GgufJob:
    """Refuse what cannot be written (arch, method, outtype, shapes, tokenizer, a changed sealed source, the output
    path) and write nothing."""
    if source.kind == "gguf":
        if outtype is not None:
            raise UnsupportedError("--outtype does not apply to a GGUF source: its tensors are copied without "
                                   "re-quantizing", "drop --outtype, or convert from the HF checkpoint")
        job = GgufJob(gguf_rope(spec, source.arch, static))
        from ropeconvert.formats.gguf_reextend import check_source

        check_source(source)
    else:
        check_outtype(outtype or "f16")
        config = source.config()
        require(config, GGUF_FIELDS, str(source.path / "config.json"), "a GGUF export")
        rope = gguf_rope(spec, source.arch, static)  # refuses what the arch cannot express before any work
        plans = plan_tensors(source.path, config, source.arch, outtype or "f16")  # shapes, from the headers alone
        check_tokenizer_json(source.path)
        job = GgufJob(rope, config, tuple(plans))
    if out is not None:
        check_output(out, force, directory=False, sources=(source.path,))
    return job


def export_gguf(source: Source, spec: RopeSpec, out: Path, *, outtype: str | None = None, static: bool = False,
                force: bool = False, progress: bool = True, provenance: dict[str, Any] | None = None,
                job: GgufJob | None = None) -> tuple[Path, list[str]]:
    """The GGUF export of a resolved Source: HF sources are converted, GGUF sources re-extended byte for byte.
    `job`: check_gguf's answer when the caller checked already."""
    job = job or check_gguf(source, spec, out, outtype=outtype, static=static, force=force)
    if source.kind == "gguf":
        from ropeconvert.formats.gguf_reextend import reextend_gguf
        from ropeconvert.formats.inspect import tensor_types

        path, notes = reextend_gguf(source, spec, out, static=static, force=force, progress=progress,
                                    provenance=provenance, rope=job.rope)
        kept = tensor_types(source.reader)
        return path, [*notes, f"tensors kept as the source stores them ({kept}): a GGUF source is re-extended "
                              "without re-quantizing; convert from an HF checkpoint to choose --outtype"]
    return write_gguf_export(source, spec, out, outtype=outtype or "f16", static=static, force=force,
                             progress=progress, name=Path(source.name.rstrip("/")).name, provenance=provenance,
                             job=job)


def write_gguf_export(hf_dir: Path | Source, spec: RopeSpec, out: Path, *, outtype: str = "f16", static: bool = False,
                      force: bool = False, progress: bool = True, name: str | None = None,
                      provenance: dict[str, Any] | None = None, job: GgufJob | None = None) -> tuple[Path, list[str]]:
    """Write an HF checkpoint (a Source, or its directory) with `spec`'s rope as one GGUF file at `out`; returns
    its path and notes for the user."""
    source = hf_dir if isinstance(hf_dir, Source) else resolve(str(hf_dir), progress=progress)
    job = job or check_gguf(source, spec, None, outtype=outtype, static=static, force=force)
    config, arch, rope = job.config, source.arch, job.rope
    _, file_type = check_outtype(outtype)
    tokenizer = TokenizerKeys(source.path, int(config["vocab_size"]))  # its worker runs from here (~2 s)
    with tokenizer, GgufExport(out, arch, provenance, force=force, sources=(source.path,)) as gx, \
            TensorStream(list(job.plans)) as stream:
        w = gx.keys
        if name:
            w.add_name(name)
        _add_hparams(w, config, arch)
        w.add_file_type(int(file_type))
        w.add_quantization_version(GGML_QUANT_VERSION)
        gx.add_rope(rope, spec)
        add_tokenizer(w, tokenizer)  # waits for the worker; the stream has been converting meanwhile
        for p, data in zip(job.plans, stream.tensors()):
            raw = None if p.qtype in (Q.F32, Q.F16) else p.qtype
            dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(p.qtype, np.uint8)
            gx.add_tensor(p.gguf_name, p.byte_shape if raw else p.shape, np.dtype(dtype), p.nbytes, raw, data=data)
        gx.write(progress)
    return gx.path, list(rope.notes)


def _add_hparams(writer: GGUFWriter, config: dict[str, Any], arch: str) -> None:
    """The architecture keys llama.cpp's loader requires (the rope keys come from gguf_rope)."""
    heads = int(config["num_attention_heads"])
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    if config.get("head_dim"):
        writer.add_key_length(int(config["head_dim"]))
        writer.add_value_length(int(config["head_dim"]))
    if arch == "phi3":
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if ARCHS[arch].local_rope:  # Gemma 3's sliding layers, their rope base and the checks of formats/gemma3.py
        from ropeconvert.formats.gemma3 import add_hparams

        add_hparams(writer, config)
