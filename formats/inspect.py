"""`ropeconvert inspect` and `ropeconvert verify` as library calls: what rope a checkpoint carries, read the way the
runtimes read it, and whether an export is still what ropeconvert wrote. Both read through formats/export.py, so
one Export serves inspect, verify and the model card with one open of each file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import Keys

from ropeconvert.errors import InputError
from ropeconvert.formats.export import Export
from ropeconvert.formats.gguf_keys import PREFIX, RopeTensors
from ropeconvert.formats.gguf_read import field, is_gguf
from ropeconvert.formats.gguf_split import shard_paths
from ropeconvert.formats.hf_config import base_rope_from_config, rope_type, spec_from_hf_config

# the GGUF keys inspect shows when present, named without their `{arch}.` prefix
GGUF_KEYS = (Keys.LLM.CONTEXT_LENGTH, Keys.Rope.DIMENSION_COUNT, Keys.Rope.FREQ_BASE, Keys.Rope.SCALING_TYPE,
             Keys.Rope.SCALING_FACTOR, Keys.Rope.SCALING_ORIG_CTX_LEN, Keys.Rope.SCALING_ATTN_FACTOR,
             Keys.Rope.SCALING_YARN_BETA_FAST, Keys.Rope.SCALING_YARN_BETA_SLOW)


def describe(path: Path | Export) -> dict[str, Any]:
    """What `ropeconvert inspect` prints: any HF model directory or GGUF file (an export or not), or an open Export."""
    export = path if isinstance(path, Export) else Export.open(path)
    return _describe_hf(export) if export.kind == "hf" else _describe_gguf(export)


def verify(path: Path | Export, source: Path | None = None) -> tuple[list[str], list[str]]:
    """What `ropeconvert verify` checks: (problems, checks done); no problems means the export is intact. A file
    named .gguf whose magic no longer reads is verified too (a damaged magic is a change like any other)."""
    from ropeconvert.formats.gguf_integrity import verify_gguf
    from ropeconvert.formats.manifest import verify_hf

    if source is not None and not Path(source).exists():
        from ropeconvert.formats.source import packaged_path

        given, source = source, packaged_path(str(source))  # `--source gemma3-270m`: an alias's local file
        if source is None:
            raise InputError(f"--source {given} not found", "pass the directory or .gguf the export was made from")
    if isinstance(path, Export):
        export = path
    else:
        p = Path(path)
        if p.is_dir():
            export = Export.open(p)
        elif p.is_file() and (is_gguf(p) or p.suffix == ".gguf"):
            export = Export("gguf", p.expanduser().absolute())
        else:
            raise InputError(f"{p} is neither an export directory nor a GGUF file", "pass what ropeconvert wrote")
    return verify_hf(export, source) if export.kind == "hf" else verify_gguf(export, source)


def _summary(values) -> str:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return "0 values"
    return f"{a.size} values, min {a.min():.4g}, max {a.max():.4g}, first {a[0]:.4g}, last {a[-1]:.4g}"


def _describe_hf(export: Export) -> dict[str, Any]:
    config = export.config
    base = base_rope_from_config(config)
    spec = spec_from_hf_config(config)
    info: dict[str, Any] = {"format": "hf", "model_type": config.get("model_type"), "rope_type": rope_type(config),
                            "rope_theta": base.rope_theta, "head_dim": base.head_dim, "rotary_dim": base.rotary_dim,
                            "original_context": base.original_context,
                            "max_position_embeddings": config.get("max_position_embeddings")}
    if "dpe" in config:  # DPE / Self-Extend: the native rope stays; the map is the `dpe` block + index map
        from ropeconvert.formats.dpe_format import read_hf_map

        pm = read_hf_map(export.path, config)
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


def _describe_gguf(export: Export) -> dict[str, Any]:
    reader, arch = export.reader, export.arch
    info: dict[str, Any] = {"format": "gguf", "arch": arch}
    shards = shard_paths(reader, export.path)
    if len(shards) > 1:  # any shard of a split reads as the whole split (formats/gguf_split.py)
        info["split"] = f"{len(shards)} shards, read from {shards[0].name}"
    for key in GGUF_KEYS:
        value = field(reader, key.format(arch=arch))
        if value is not None:
            info[key.replace("{arch}.", "")] = value
    info["file_type"] = tensor_types(reader)
    for t in reader.tensors:
        if t.name in RopeTensors.ALL:
            info[t.name] = _summary(np.asarray(t.data, dtype=np.float64))
    ours = {k: field(reader, k) for k in reader.fields if k.startswith(PREFIX)}  # field(): damage is one line
    info.update({k: (v if not isinstance(v, list) or len(v) < 12 else f"{len(v)} values") for k, v in ours.items()})
    return info


def tensor_types(reader) -> str:
    """The GGUF's tensor types by count, most common first, e.g. "Q4_1 (211), F32 (61)": what a re-extension keeps."""
    from collections import Counter

    counts = Counter(t.tensor_type.name for t in reader.tensors if t.name not in RopeTensors.ALL)
    return ", ".join(f"{name} ({n})" for name, n in counts.most_common())
