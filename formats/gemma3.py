"""Gemma 3's per-layer-type rope, in every format: only the global (full-attention) layers are extended.

Gemma 3 (transformers `gemma3_text`, GGUF `gemma3`) interleaves sliding-window layers, whose rope has its own base
(`rope_local_base_freq`, 10000) and is never scaled, with global layers (every 6th: 5:1) that carry `rope_theta`
(1e6) and any rope scaling. What each reader does, checked in the versions we test:
- transformers 4.57: `rope_theta` + `rope_scaling` are the global layers' rope; the sliding layers' rotary embedding
  is built from `rope_local_base_freq` with the default rope.
- transformers 5.x: `rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`; a legacy
  `rope_scaling` updates the full-attention entry, `rope_local_base_freq` fills the sliding one.
- llama.cpp (src/models/gemma3.cpp, src/llama-model.cpp `get_rope_freq_base/scale`): a sliding layer (from
  `attention.sliding_window_pattern`, a per-layer bool array or a period, default 6) takes `rope.freq_base_swa`
  (default 10000) and freq_scale 1; every layer gets the same ext_factor and attn_factor. With freq_scale 1 a YaRN
  ramp changes nothing and ggml's YaRN magnitude 1 + 0.1·ln(1/freq_scale) is 1, so linear, ntk and default YaRN
  reach the global layers only. `rope.scaling.attn_factor`, though, would scale the sliding layers too: a custom
  attention factor cannot be written (gguf_rope refuses it). No factor tensor is passed to ggml_rope_ext, so
  per-pair kinds (longrope, llama3) cannot be expressed.
- The query scale: llama.cpp uses 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B); transformers
  query_pre_attn_scalar^-0.5, so a GGUF export needs query_pre_attn_scalar = head_dim.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from ropeconvert.errors import InputError, UnsupportedError

LOCAL_THETA = 10000.0  # transformers' Gemma3TextConfig default_theta["local"] and llama.cpp's freq_base_swa default
PATTERN = 6  # transformers' sliding_window_pattern default and llama.cpp's load_swa_pattern(ml, 6)


def layer_types(config: dict[str, Any]) -> list[str]:
    """Per layer, "sliding_attention" or "full_attention", as transformers derives it."""
    n = int(config["num_hidden_layers"])
    given = config.get("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != n or not set(given) <= {"sliding_attention", "full_attention"}:
            raise InputError(f"config.json: layer_types must list {n} values of sliding_attention/full_attention",
                             "fix layer_types in config.json")
        return list(given)
    pattern = config.get("sliding_window_pattern") or PATTERN
    return ["sliding_attention" if (i + 1) % int(pattern) else "full_attention" for i in range(n)]


def local_theta(config: dict[str, Any]) -> float:
    """The sliding layers' rope base, from either config form."""
    per_type = config.get("rope_parameters") or {}
    sliding = per_type.get("sliding_attention") if isinstance(per_type, dict) else None
    if isinstance(sliding, dict) and sliding.get("rope_theta") is not None:
        return float(sliding["rope_theta"])
    return float(config.get("rope_local_base_freq") or LOCAL_THETA)


def add_layer_ropes(out: dict[str, Any], source: dict[str, Any]) -> None:
    """Write the export's rope in both forms: `rope_theta`/`rope_scaling` (already in `out`, read by 4.57 and
    vLLM/SGLang) and the per-layer-type `rope_parameters` transformers 5 reads, with the sliding layers' rope
    untouched."""
    local = local_theta(source)
    full = copy.deepcopy(out.get("rope_scaling")) or {"rope_type": "default"}
    full.pop("type", None)
    full["rope_theta"] = float(out["rope_theta"])
    out["rope_parameters"] = {"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    out["rope_local_base_freq"] = local
    out["layer_types"] = layer_types(source)


def config_from_gguf(reader, field: Callable[..., Any], arch: str, n_layers: int, head_dim: int) -> dict[str, Any]:
    """The Gemma 3 settings of an HF config built from GGUF metadata (formats/gguf_read.py)."""
    from gguf import Keys  # here, not at the top: transformers-only environments import this module too

    pattern = field(reader, Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), PATTERN)
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise InputError(f"GGUF metadata {arch}.attention.sliding_window_pattern has {len(pattern)} entries for "
                             f"{n_layers} layers", "the file is damaged; re-export it")
        types = ["sliding_attention" if swa else "full_attention" for swa in pattern]
    else:
        types = layer_types({"num_hidden_layers": n_layers, "sliding_window_pattern": pattern})
    window = field(reader, Keys.Attention.SLIDING_WINDOW.format(arch=arch), 0)
    out = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": head_dim, "layer_types": types,
           "sliding_window": int(window) if window else None,
           "rope_local_base_freq": float(field(reader, Keys.Rope.FREQ_BASE_SWA.format(arch=arch), LOCAL_THETA)),
           "final_logit_softcapping": field(reader, Keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch)),
           "attn_logit_softcapping": None}
    if not window:  # llama.cpp then runs every layer as a global one, with the global rope
        out["layer_types"] = ["full_attention"] * n_layers
    return out


def add_hparams(writer, config: dict[str, Any]) -> None:
    """The Gemma 3 keys of an HF → GGUF export; refuses settings llama.cpp's gemma3 graph would run differently."""
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    scalar = config.get("query_pre_attn_scalar", 256)
    if scalar != head_dim:
        raise UnsupportedError(f"query_pre_attn_scalar {scalar} differs from head_dim {head_dim}: llama.cpp's gemma3 "
                               "graph scales queries by 1/sqrt(head_dim)", "export --to hf")
    if config.get("attn_logit_softcapping"):
        raise UnsupportedError("attn_logit_softcapping is set, which llama.cpp's gemma3 graph does not apply",
                               "export --to hf")
    types = layer_types(config)
    window = config.get("sliding_window")
    if window:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        writer.add_rope_freq_base_swa(local_theta(config))
    elif "sliding_attention" in types:
        raise InputError("config.json has sliding layers but no sliding_window", "set sliding_window in config.json")
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
