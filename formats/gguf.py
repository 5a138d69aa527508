"""HF → GGUF export, streamed: every tensor info is registered first (gguf's add_tensor_info, as its
gguf_new_metadata script does), then formats/gguf_stream.py converts and writes the data in row blocks, so peak
memory is a few blocks whatever the model size (bench/convert.py measures it at 1.5 and 3 GB).

Names go through gguf's own HF→GGUF tensor map, restricted to the tensors the arch really has. The llama arch runs
llama.cpp's NORM (interleaved-pair) rope, so Q/K rows are permuted from HF's rotate-half order; qwen2/qwen3/phi3 run
NEOX rope and take the weights as they are. 1-D tensors (norms, biases) stay F32, as llama.cpp's converter keeps
them; q8_0 falls back to f16 for a tensor whose rows do not split into 32-value blocks, as that converter does.
The rope comes from formats/gguf_rope.py and the tokenizer from formats/gguf_tokenizer.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import (GGML_QUANT_VERSION, MODEL_ARCH_NAMES, MODEL_TENSORS, GGMLQuantizationType, GGUFWriter,
                  LlamaFileType, get_tensor_name_map, quants)

from ropeconvert.convert.spec import RopeSpec
from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.gguf_integrity import add_provenance, digest_header, write_digest
from ropeconvert.formats.gguf_rope import add_rope, gguf_rope
from ropeconvert.formats.gguf_stream import TensorPlan, TensorStream, write_tensor_data
from ropeconvert.formats.gguf_tokenizer import TokenizerKeys, add_tokenizer, check_tokenizer_json
from ropeconvert.formats.output import atomic_output
from ropeconvert.formats.config_check import GGUF_FIELDS
from ropeconvert.formats.source import read_config
from ropeconvert.formats.tensors import index_weights

Q = GGMLQuantizationType
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}
OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32), "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_ARCH_ENUM = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}


def gguf_arch_for(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    if model_type not in GGUF_ARCH:
        raise UnsupportedError(f"GGUF export does not support model_type={model_type!r}",
                               f"supported: {', '.join(GGUF_ARCH)}; or export --to hf")
    return GGUF_ARCH[model_type]


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
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            n_head = heads
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            n_head = kv_heads
        plans.append(TensorPlan(hf_name, found[1], shape, t, info, n_head))
    if not plans:
        raise InputError(f"{hf_dir} holds no weights")
    return plans


def write_gguf_export(hf_dir: Path, spec: RopeSpec, out: Path, *, outtype: str = "f16", static: bool = False,
                      force: bool = False, progress: bool = True, name: str | None = None,
                      provenance: dict[str, Any] | None = None) -> tuple[Path, list[str]]:
    """Write `hf_dir` with `spec`'s rope as one GGUF file at `out`; returns its path and notes for the user."""
    config = read_config(hf_dir, GGUF_FIELDS, "a GGUF export")  # every hparam _add_hparams writes, type-checked
    arch = gguf_arch_for(config)
    _, file_type = check_outtype(outtype)
    rope = gguf_rope(spec, arch, static)  # refuses what the arch cannot express before any work
    notes = list(rope.notes)
    plans = plan_tensors(hf_dir, config, arch, outtype)  # refuses bad shapes before any output exists
    tokenizer = TokenizerKeys(hf_dir, int(config["vocab_size"]))  # its worker runs from here (~2 s)
    with tokenizer, atomic_output(out, force=force, directory=False, sources=(hf_dir,)) as tmp, \
            TensorStream(plans) as stream:
        writer = GGUFWriter(str(tmp), arch)
        try:
            add_provenance(writer, provenance)  # first: the sealed digest covers every key after it
            if name:
                writer.add_name(name)
            _add_hparams(writer, config, arch)
            writer.add_file_type(int(file_type))
            writer.add_quantization_version(GGML_QUANT_VERSION)
            add_rope(writer, rope, spec)
            add_tokenizer(writer, tokenizer)  # waits for the worker; the stream has been converting meanwhile
            for tname, arr in rope.tensors.items():
                writer.add_tensor_info(tname, arr.shape, arr.dtype, arr.nbytes)
            for p in plans:
                raw = None if p.qtype in (Q.F32, Q.F16) else p.qtype
                dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(p.qtype, np.uint8)
                writer.add_tensor_info(p.gguf_name, p.byte_shape if raw else p.shape, np.dtype(dtype), p.nbytes, raw)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            value_at, hasher = digest_header(tmp)  # hashes the keys and tensor infos after the digest placeholder
            write_tensor_data(writer.fout[0], list(rope.tensors.values()), stream, hasher, progress)
        finally:
            writer.close()
        write_digest(tmp, value_at, hasher.hexdigest())
        final = Path(out).expanduser().absolute()
    return final, notes


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


def export_gguf(source, spec: RopeSpec, out: Path, *, outtype: str | None = None, static: bool = False,
                force: bool = False, progress: bool = True, check_only: bool = False,
                provenance: dict[str, Any] | None = None) -> tuple[Path | None, list[str]]:
    """The GGUF export of a resolved Source: HF sources are converted, GGUF sources re-extended byte for byte.

    With check_only, only refuse what cannot be written (arch, method, outtype, output path) and write nothing.
    """
    from ropeconvert.formats.gguf_read import gguf_arch, open_gguf
    from ropeconvert.formats.output import check_output

    if source.kind == "gguf":
        if outtype is not None:
            raise UnsupportedError("--outtype does not apply to a GGUF source: its tensors are copied without "
                                   "re-quantizing", "drop --outtype, or convert from the HF checkpoint")
        gguf_rope(spec, gguf_arch(open_gguf(source.path)), static)
        if check_only:  # `--to both`: a changed sealed source is refused before the HF half is written
            from ropeconvert.formats.gguf_reextend import check_source_seal

            check_source_seal(source.path)
    else:
        check_outtype(outtype or "f16")
        config = read_config(source.path, GGUF_FIELDS, "a GGUF export")
        gguf_rope(spec, gguf_arch_for(config), static)
        plan_tensors(source.path, config, gguf_arch_for(config), outtype or "f16")  # shapes, from the headers alone
        check_tokenizer_json(source.path)
    check_output(out, force, directory=False, sources=(source.path,))
    if check_only:
        return None, []
    if source.kind == "gguf":
        from ropeconvert.formats.gguf_reextend import reextend_gguf

        from ropeconvert.formats.inspect import tensor_types

        path, notes = reextend_gguf(source.path, spec, out, static=static, force=force, progress=progress,
                                    provenance=provenance)
        kept = tensor_types(open_gguf(source.path))
        return path, [*notes, f"tensors kept as the source stores them ({kept}): a GGUF source is re-extended "
                              "without re-quantizing; convert from an HF checkpoint to choose --outtype"]
    return write_gguf_export(source.path, spec, out, outtype=outtype or "f16", static=static, force=force,
                             progress=progress, name=Path(source.name.rstrip("/")).name, provenance=provenance)
