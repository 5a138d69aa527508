"""Reading GGUF files: metadata, the rope they carry, and dequantization into an HF safetensors checkpoint.

GGUF → HF: every tensor is dequantized with the `gguf` package's own quantizers, renamed to the HF layout and, for
the llama arch, Q/K are un-permuted (llama.cpp stores them interleaved for its NORM rope; HF uses rotate-half).
Shards are written as they fill, so memory stays about one shard. The tokenizer is rebuilt by transformers from
the GGUF vocabulary (its `gguf_file=` loader), which is the one piece we do not write ourselves.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ropeconvert.errors import InputError, UnsupportedError

GGUF_MAGIC = b"GGUF"
HF_ARCH = {  # GGUF arch → (HF model_type, HF class)
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}
_LAYER = {  # GGUF per-block tensor → HF module path under model.layers.N
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
SHARD_BYTES = 2 * 1024**3


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def open_gguf(path: Path):
    """A GGUFReader, with a truncated or corrupt file reported as one InputError."""
    from gguf import GGUFReader

    if not is_gguf(path):
        raise InputError(f"{path} is not a GGUF file (no GGUF magic)", "pass a .gguf file, an HF directory or a Hub id")
    try:
        return GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on damage
        raise InputError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {str(e)[:120]})", "re-download or re-export the file") from None


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
    if arch not in HF_ARCH:
        raise UnsupportedError(f"unsupported GGUF architecture {arch!r}", f"supported: {', '.join(HF_ARCH)}")
    return arch


def hf_config_from_gguf(reader) -> dict[str, Any]:
    """An HF config.json equivalent of the GGUF metadata (plain RoPE: any scaling the file carries is dropped)."""
    arch = gguf_arch(reader)
    model_type, cls = HF_ARCH[arch]

    def need(key: str):
        v = field(reader, f"{arch}.{key}")
        if v is None:
            raise InputError(f"GGUF lacks {arch}.{key}", "the file is incomplete; re-export it")
        return v

    names = {t.name for t in reader.tensors}
    heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
    head_dim = int(field(reader, f"{arch}.attention.key_length", hidden // heads))
    n_rot = int(field(reader, f"{arch}.rope.dimension_count", head_dim))
    orig = field(reader, f"{arch}.rope.scaling.original_context_length") or need("context_length")
    vocab = field(reader, f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": [cls], "model_type": model_type, "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")), "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads, "num_key_value_heads": int(field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim, "rms_norm_eps": float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(field(reader, f"{arch}.rope.freq_base", 10000.0)), "max_position_embeddings": int(orig),
        "vocab_size": int(vocab), "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if n_rot != head_dim:
        config["partial_rotary_factor"] = n_rot / head_dim
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in names, mlp_bias=False)
    for key, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("padding_token_id", "pad_token_id")):
        v = field(reader, f"tokenizer.ggml.{key}")
        if v is not None:
            config[hf_key] = int(v)
    return config


def existing_scaling(reader) -> str | None:
    """A description of the rope scaling a GGUF already carries, or None for plain RoPE."""
    arch = field(reader, "general.architecture")
    kind = field(reader, f"{arch}.rope.scaling.type")
    factor = field(reader, f"{arch}.rope.scaling.factor") or field(reader, f"{arch}.rope.scale_linear")
    tensors = [t.name for t in reader.tensors if t.name in ROPE_TENSORS]
    if tensors:
        return f"{', '.join(tensors)}" + (f" (type {kind})" if kind else "")
    if kind not in (None, "none") and factor not in (None, 0.0, 1.0):
        return f"rope.scaling.type={kind} factor={factor:g}"
    if kind == "yarn":
        return "rope.scaling.type=yarn"
    return None


def hf_name(gguf_name: str) -> str | None:
    """HF tensor name for a GGUF one; None for tensors that are rope metadata rather than weights."""
    if gguf_name in ROPE_TENSORS:
        return None
    stem, _, kind = gguf_name.rpartition(".")
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{kind}"
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    raise UnsupportedError(f"GGUF tensor {gguf_name!r} has no HF equivalent here", "only llama/qwen2/qwen3/phi3 layouts are supported")


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K permute (rotate-half ← interleaved), along the output dimension."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized_tensors(reader, config: dict[str, Any]):
    """(hf_name, float32 array) for every weight, one at a time."""
    from gguf import quants

    arch = field(reader, "general.architecture")
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        try:
            arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise UnsupportedError(f"GGUF tensor {t.name!r} uses {t.tensor_type.name}, which the gguf package cannot dequantize") from None
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = unpermute(arr, config["num_attention_heads"])
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = unpermute(arr, config["num_key_value_heads"])
        yield name, arr


def write_hf_from_gguf(path: Path, out_dir: Path, progress: bool = True) -> None:
    """Dequantize a GGUF into `out_dir` (config, safetensors shards, tokenizer). `out_dir` must exist and be empty."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    reader = open_gguf(path)
    config = hf_config_from_gguf(reader)
    shards: list[dict[str, Any]] = [{}]
    size = 0
    weight_map: dict[str, str] = {}
    n = sum(1 for t in reader.tensors if t.name not in ROPE_TENSORS)
    for name, arr in tqdm(dequantized_tensors(reader, config), total=n, desc="dequantize GGUF", unit="tensor",
                          disable=not progress):
        if size and size + arr.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        size += arr.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * 4 for s in shards for t in s.values())
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_tokenizer(path, out_dir)


def _write_tokenizer(path: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise UnsupportedError(f"could not rebuild the tokenizer from {path.name}: {str(e)[:160]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tok.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # loads in transformers 4.x and 5.x alike
    cfg.pop("is_local", None)
    cfg.pop("local_files_only", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
