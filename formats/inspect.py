"""`ropeconvert inspect`: what rope a checkpoint carries, read the way the runtimes read it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ropeconvert.errors import InputError
from ropeconvert.formats.gguf_read import ROPE_TENSORS, field, is_gguf, open_gguf
from ropeconvert.formats.hf_config import base_rope_from_config, rope_type, spec_from_hf_config
from ropeconvert.formats.source import read_config


def describe(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        return _describe_hf(path)
    if path.is_file() and is_gguf(path):
        return _describe_gguf(path)
    if not path.exists():
        raise InputError(f"{path} not found (no such file or directory)", "check the path")
    raise InputError(f"{path} is neither an HF model directory nor a GGUF file", "pass a directory with config.json or a .gguf file")


def _summary(values) -> str:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return "0 values"
    return f"{a.size} values, min {a.min():.4g}, max {a.max():.4g}, first {a[0]:.4g}, last {a[-1]:.4g}"


def _describe_hf(path: Path) -> dict[str, Any]:
    config = read_config(path)
    base = base_rope_from_config(config)
    spec = spec_from_hf_config(config)
    info: dict[str, Any] = {"format": "hf", "model_type": config.get("model_type"), "rope_type": rope_type(config),
                            "rope_theta": base.rope_theta, "head_dim": base.head_dim, "rotary_dim": base.rotary_dim,
                            "original_context": base.original_context,
                            "max_position_embeddings": config.get("max_position_embeddings")}
    if "dpe" in config:  # DPE / Self-Extend: the native rope stays; the map is the `dpe` block + index map
        from ropeconvert.formats.dpe_format import read_hf_map

        pm = read_hf_map(path, config)
        block = config["dpe"]
        info.update({"position_map": block.get("method"), "target_context": block.get("target_context"),
                     "window": pm.window, "group_boundaries": list(pm.boundaries), "scales": list(pm.scales),
                     "selected": "all pairs" if pm.selected is None else
                     f"{int(pm.selected.sum())} of {pm.selected.size} (layer, head, pair) slots ({block['index_map']})",
                     "attn_implementation": config.get("attn_implementation")})
    if spec is not None:
        info["target_context"] = spec.target_context
        info["scale"] = round(spec.scale, 6)
        info["attention_factor"] = spec.attention_factor
        if spec.factors is not None:
            info["factors (long)"] = _summary(spec.factors)
        if spec.short_factors is not None:
            info["factors (short)"] = _summary(spec.short_factors)
        if spec.dynamic_factor is not None:
            info["dynamic_factor"] = spec.dynamic_factor
    return info


def _describe_gguf(path: Path) -> dict[str, Any]:
    reader = open_gguf(path)
    arch = field(reader, "general.architecture")
    info: dict[str, Any] = {"format": "gguf", "arch": arch}
    for key in ("context_length", "rope.dimension_count", "rope.freq_base", "rope.scaling.type", "rope.scaling.factor",
                "rope.scaling.original_context_length", "rope.scaling.attn_factor", "rope.scaling.yarn_beta_fast",
                "rope.scaling.yarn_beta_slow"):
        value = field(reader, f"{arch}.{key}")
        if value is not None:
            info[key] = value
    info["file_type"] = tensor_types(reader)
    for t in reader.tensors:
        if t.name in ROPE_TENSORS:
            info[t.name] = _summary(np.asarray(t.data, dtype=np.float64))
    dpe = {k: field(reader, k) for k in reader.fields if k.startswith("ropeconvert.")}  # field(): damage is one line
    info.update({k: (v if not isinstance(v, list) or len(v) < 12 else f"{len(v)} values") for k, v in dpe.items()})
    return info


def tensor_types(reader) -> str:
    """The GGUF's tensor types by count, most common first, e.g. "Q4_1 (211), F32 (61)": what a re-extension keeps."""
    from collections import Counter

    counts = Counter(t.tensor_type.name for t in reader.tensors if t.name not in ROPE_TENSORS)
    return ", ".join(f"{name} ({n})" for name, n in counts.most_common())
