"""Reading GGUF files: metadata, the rope they carry, and dequantization into an HF safetensors checkpoint.

GGUF → HF: every tensor is dequantized with the `gguf` package's own quantizers, renamed to the HF layout and, for
the llama arch, Q/K are un-permuted (llama.cpp stores them interleaved for its NORM rope; HF uses rotate-half).
Gemma's RMSNorm weights lose the 1 llama.cpp's converter added. formats/gguf_to_hf.py writes the checkpoint.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import Keys

from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.archs import ARCHS
from ropeconvert.formats.gguf_header import check_header, printable_name as _label
from ropeconvert.formats.gguf_keys import RopeTensors
from ropeconvert.formats.gguf_split import file_identity, merge_split, still_current
from ropeconvert.formats.gguf_stream import unpermute
from ropeconvert.formats.safe_io import open_regular

GGUF_MAGIC = b"GGUF"
_LAYER = {  # GGUF per-block tensor → HF module path under model.layers.N
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
SHARD_BYTES = 2 * 1024**3


def is_gguf(path: Path) -> bool:
    """Whether `path` is a file starting with the GGUF magic (False for a missing path or a directory). A file that
    cannot be read is one InputError saying so: "not a GGUF" would blame the wrong thing, and a FIFO would block."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        return False
    with open_regular(path) as f:
        try:
            return f.read(4) == GGUF_MAGIC
        except OSError as e:
            raise InputError(f"cannot read {path} ({os.strerror(e.errno or errno.EIO)})", "check the disk or the file") from None


def open_gguf(path: Path):
    """A GGUFReader, with a truncated or corrupt file reported as one InputError. The header is walked first
    (check_header), so the reader never sees a count or a shape that does not fit the file. Any shard of a split
    GGUF (llama-gguf-split) opens as one reader over all its shards (formats/gguf_split.py)."""
    if not Path(path).exists():
        raise InputError(f"{path} not found", "check the path")
    if not is_gguf(path):
        raise InputError(f"{path} is not a GGUF file (no GGUF magic)", "pass a .gguf file, an HF directory or a Hub id")
    key = file_identity(path)
    if key in _READERS and still_current(_READERS[key]):
        return _READERS[key]
    reader = merge_split(Path(path), _read_one(path), _read_one)
    _READERS.clear()  # only the last one: a reader of a 49k-token vocabulary holds ~150 MB of numpy views
    for k in getattr(reader, "identities", (key,)):  # a split: found again by any of its shards
        _READERS[k] = reader
    return reader


def _read_one(path: Path):
    from gguf import GGUFReader

    check_header(path)
    try:
        return GGUFReader(str(path), "r")
    except Exception as e:  # what the walk cannot foresee; the reader's own message may quote names from the file
        raise InputError(f"{path}: corrupt or truncated GGUF (gguf's reader refused it: {type(e).__name__})",
                         "re-download or re-export the file") from None


# gguf's reader takes seconds per 49k-token vocabulary. A conversion keeps its source's reader (Source.reader); the
# last reader opened here is kept too, by file identity, for resolve's peek and for commands that read a file in
# several places (verify, inspect, validate). It is a read-only shared map, so an edit in place is seen through it; any rewrite changes
# the size, inode or mtime, hence the key.
_READERS: dict[tuple, Any] = {}


def field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        raise InputError(f"GGUF metadata {key!r} is unreadable", "the file is corrupt; re-download it") from None


def gguf_arch(reader) -> str:
    arch = field(reader, "general.architecture")
    if not isinstance(arch, str) or arch not in ARCHS:
        from ropeconvert.formats.config_check import show

        raise UnsupportedError(f"unsupported GGUF architecture {show(arch)}", f"supported: {', '.join(ARCHS)}")
    return arch


def hf_config_from_gguf(reader) -> dict[str, Any]:
    """An HF config.json equivalent of the GGUF metadata (plain RoPE: any scaling the file carries is dropped).
    Every number is checked here, naming its GGUF key, before anything divides or reshapes by it."""
    from ropeconvert.formats.config_check import MAX_CONTEXT, check_config

    arch = gguf_arch(reader)
    model_type, cls = ARCHS[arch].model_type, ARCHS[arch].hf_class
    A, L = Keys.Attention, Keys.LLM

    def count(key: str, default: Any = None, most: int = 1 << 26, least: int = 1) -> int:
        return _gguf_int(reader, key.format(arch=arch), default, most, least)  # key: a gguf.Keys template

    names = {t.name for t in reader.tensors}
    heads, hidden = count(A.HEAD_COUNT, most=1 << 14), count(L.EMBEDDING_LENGTH, most=1 << 20)
    kv_heads = count(A.HEAD_COUNT_KV, heads, most=heads)
    if heads % kv_heads:
        raise InputError(f"GGUF metadata: {arch}.attention.head_count {heads} is not a multiple of "
                         f"{arch}.attention.head_count_kv {kv_heads}", "the file is damaged; re-export it")
    head_dim = count(A.KEY_LENGTH, hidden // heads or None, most=1 << 14)
    n_rot = count(Keys.Rope.DIMENSION_COUNT, head_dim, most=head_dim)
    if n_rot % 2 or head_dim % 2:
        raise InputError(f"GGUF metadata: head size {head_dim} / rope.dimension_count {n_rot} must be even",
                         "the file is damaged; re-export it")
    orig = count(Keys.Rope.SCALING_ORIG_CTX_LEN, 0, most=MAX_CONTEXT, least=0) or \
        count(L.CONTEXT_LENGTH, most=MAX_CONTEXT)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = count(L.VOCAB_SIZE, len(tokens.data) if tokens is not None else None)
    config = {
        "architectures": [cls], "model_type": model_type, "hidden_size": hidden,
        "intermediate_size": count(L.FEED_FORWARD_LENGTH, most=1 << 22), "num_hidden_layers": count(L.BLOCK_COUNT, most=1 << 14),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "rms_norm_eps": _gguf_number(reader, A.LAYERNORM_RMS_EPS.format(arch=arch), 1e-6, 0.0),
        "rope_theta": _gguf_number(reader, Keys.Rope.FREQ_BASE.format(arch=arch), 10000.0, 1.0),
        "max_position_embeddings": orig, "vocab_size": vocab, "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    if n_rot != head_dim:
        config["partial_rotary_factor"] = n_rot / head_dim
    if arch == "llama":  # the keys transformers' Llama config has and the others lack
        config.update(attention_bias="blk.0.attn_q.bias" in names, mlp_bias=False)
    if ARCHS[arch].local_rope:  # Gemma 3: sliding layers, their own rope base, gelu, the query scale
        from ropeconvert.formats.gemma3 import config_from_gguf

        del config["hidden_act"]
        config.update(config_from_gguf(reader, field, arch, config["num_hidden_layers"], head_dim))
    for key, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("padding_token_id", "pad_token_id")):
        if field(reader, f"tokenizer.ggml.{key}") is not None:
            config[hf_key] = _gguf_int(reader, f"tokenizer.ggml.{key}", None, vocab - 1, 0)
    return check_config(config, f"the HF config built from {arch} GGUF metadata")


def _gguf_int(reader, key: str, default: Any, most: int, least: int = 1) -> int:
    from ropeconvert.formats.config_check import show

    v = field(reader, key, default)
    if v is None:
        raise InputError(f"GGUF lacks {key}", "the file is incomplete; re-export it")
    if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= most:
        raise InputError(f"GGUF metadata {key} must be an integer from {least} to {most}, got {show(v)}",
                         "the file is damaged; re-export it")
    return v


def _gguf_number(reader, key: str, default: float, above: float) -> float:
    from ropeconvert.formats.config_check import show

    v = field(reader, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= above:
        raise InputError(f"GGUF metadata {key} must be a finite number > {above:g}, got {show(v)}",
                         "the file is damaged; re-export it")
    return float(v)


def existing_scaling(reader) -> str | None:
    """A description of the rope scaling a GGUF already carries, or None for plain RoPE."""
    arch = field(reader, Keys.General.ARCHITECTURE)
    kind = field(reader, Keys.Rope.SCALING_TYPE.format(arch=arch))
    factor = field(reader, Keys.Rope.SCALING_FACTOR.format(arch=arch)) or field(reader, f"{arch}.rope.scale_linear")
    from ropeconvert.formats.config_check import show

    tensors = [t.name for t in reader.tensors if t.name in RopeTensors.ALL]
    shown = kind if isinstance(kind, str) and kind.isidentifier() else show(kind)  # values from the file, shown safely
    if tensors:
        return f"{', '.join(tensors)}" + (f" (type {shown})" if kind else "")
    if kind not in (None, "none") and factor not in (None, 0.0, 1.0):
        number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
        return f"rope.scaling.type={shown} factor={f'{factor:g}' if number else show(factor)}"
    if kind == "yarn":
        return "rope.scaling.type=yarn"
    return None


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """HF tensor name for a GGUF one; None for tensors that are rope metadata rather than weights."""
    if gguf_name in RopeTensors.ALL:
        return None
    stem, _, kind = gguf_name.rpartition(".")
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    layer = {**_LAYER, **dict(ARCHS[arch].layer_names)} if arch in ARCHS else _LAYER
    if m and m.group(2) in layer:
        return f"model.layers.{m.group(1)}.{layer[m.group(2)]}.{kind}"
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    raise UnsupportedError(f"GGUF tensor {_label(gguf_name, 'of the file')} has no HF equivalent here",
                           f"only the {', '.join(ARCHS)} layouts are supported")


def dequantized_tensors(reader, config: dict[str, Any]):
    """(hf_name, float32 array) for every weight, one at a time."""
    from gguf import quants

    arch = ARCHS[gguf_arch(reader)]
    permute = arch.permute_qk
    for t in reader.tensors:
        name = hf_name(t.name, arch.gguf)
        if name is None:
            continue
        try:
            arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise UnsupportedError(f"GGUF tensor {_label(t.name, 'of the file')} uses {t.tensor_type.name}, which the "
                                   "gguf package cannot dequantize") from None
        heads = None
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = config["num_attention_heads"]
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = config["num_key_value_heads"]
        if heads is not None:
            if arr.ndim == 0 or arr.shape[0] % (2 * heads) or not arr.size:
                raise InputError(f"GGUF tensor {_label(t.name, 'of the file')} has {arr.shape[0] if arr.ndim else 0} rows, which do not "
                                 f"split into {heads} heads of an even size", "the file is damaged; re-export it")
            arr = unpermute(arr, heads)
        if arch.norm_shift and name.endswith("norm.weight"):
            arr = arr - np.float32(arch.norm_shift)  # GGUF keeps Gemma's 1 + w
        yield name, arr
