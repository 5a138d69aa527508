"""THE one place that writes and reads a position map (DPE, Self-Extend) in HF exports and GGUF files.

HF export — the native rope stays (config.json's rope keys and max_position_embeddings are the base's), weights are
untouched, and two things are added:
- config.json `dpe`: {format, method, window, group_boundaries, scales, original_max_position_embeddings,
  target_context, index_map, index_map_sha256} — `index_map` names the selection file (null when every pair is
  selected, as in Self-Extend) and its sha256 ties the two together;
- config.json `attn_implementation: "ropeconvert_dpe"`, so a plain `from_pretrained` after `import ropeconvert`
  runs DPE, and without the import transformers refuses the unknown attention loudly instead of silently running
  the plain rope past the trained length;
- `dpe_index_map.safetensors`: one uint8 tensor `selected` [layers, heads, pairs] (1 = the pair is rescaled for
  that layer and query head). safetensors, so it loads without pickle.

GGUF — llama.cpp has no position maps. The exact map travels as `ropeconvert.dpe.*` metadata (and inside the spec
JSON key), and llama.cpp runs a labelled *approximation*: a `rope_freqs` tensor with f_i = g of pair i's group when
pair i is selected in at least half of all (layer, head) slots, else 1. A per-head mask cannot go into one vector
(this majority vote is the reduction), and the local window and the floor grouping are dropped: positions inside
the window are interpolated too. validators measure the gap (bench/dpe_smollm2.py).
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ropeconvert.convert.position_map import PositionMap
from ropeconvert.errors import InputError, SpecError, UnsupportedError
from ropeconvert.formats.gguf_keys import Keys, RopeTensors

CONFIG_KEY = "dpe"
FORMAT = "ropeconvert.dpe/1"
INDEX_MAP_FILE = "dpe_index_map.safetensors"
INDEX_TENSOR = "selected"
ATTN_NAME = "ropeconvert_dpe"  # = validators.dpe_register.ATTN_NAME (kept import-free here; a test ties them)
GGUF_PREFIX = Keys.DPE_PREFIX
GGUF_KEYS = tuple(GGUF_PREFIX + k for k in ("method", "window", "group_boundaries", "scales", "selected_shape",
                                             "selected", "approximation"))
MAJORITY = 0.5  # a pair enters rope_freqs when selected in at least this share of (layer, head) slots
APPROXIMATION = ("rope_freqs approximation of the position map: f_i = g of pair i's group if pair i is selected in "
                 f"≥ {MAJORITY:.0%} of (layer, head) slots, else 1; no local window, no floor grouping")


# ---- HF ---------------------------------------------------------------------------------------------------------
def index_map_bytes(pm: PositionMap) -> bytes | None:
    """The selection file's bytes (deterministic: same map, same bytes), or None when every pair is selected."""
    if pm.selected is None:
        return None
    from safetensors.numpy import save

    return save({INDEX_TENSOR: pm.selected.astype(np.uint8)}, metadata={"format": FORMAT})


def hf_config(spec, config: dict[str, Any]) -> dict[str, Any]:
    """config.json for a position-map export: the source's config (rope untouched) + the `dpe` block."""
    pm: PositionMap = spec.position_map
    layers, heads = _int(config, "num_hidden_layers"), _int(config, "num_attention_heads")
    pm.check_model(layers, heads, spec.base.n_pairs)
    data = index_map_bytes(pm)
    out = copy.deepcopy(config)
    out[CONFIG_KEY] = {
        "format": FORMAT, "method": spec.method, "window": pm.window, "group_boundaries": list(pm.boundaries),
        "scales": list(pm.scales), "original_max_position_embeddings": spec.original_context,
        "target_context": spec.target_context, "index_map": INDEX_MAP_FILE if data is not None else None,
        "index_map_sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
    }
    out["attn_implementation"] = ATTN_NAME
    return out


def hf_files(spec) -> dict[str, bytes]:
    data = index_map_bytes(spec.position_map)
    return {} if data is None else {INDEX_MAP_FILE: data}


def position_map_from_hf(block: Any, read: Callable[[str], bytes]) -> PositionMap:
    """The map a config `dpe` block describes; `read(name)` returns the bytes of a file of the export."""
    if not isinstance(block, dict) or block.get("format") != FORMAT:
        raise InputError(f"config.json `{CONFIG_KEY}` is not a {FORMAT} block", "re-export with ropeconvert")
    try:
        window, bounds, scales = block["window"], block["group_boundaries"], block["scales"]
        original = block["original_max_position_embeddings"]
    except KeyError as e:
        raise InputError(f"config.json `{CONFIG_KEY}` lacks {e.args[0]!r}", "re-export with ropeconvert") from None
    name = block.get("index_map")
    if name is None:
        return PositionMap.build(window=window, boundaries=bounds, scales=scales, original_context=original)
    if not isinstance(name, str) or Path(name).name != name:
        raise InputError(f"config.json `{CONFIG_KEY}.index_map` must be a file name in the export, got {name!r}")
    data = read(name)
    if block.get("index_map_sha256") and hashlib.sha256(data).hexdigest() != block["index_map_sha256"]:
        raise InputError(f"{name} does not match the sha256 in config.json `{CONFIG_KEY}`",
                         "the index map was changed or replaced: re-export the model")
    from safetensors.numpy import load

    try:
        selected = load(data)[INDEX_TENSOR]
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise InputError(f"{name} is not a valid index map ({' '.join(str(e).split())[:120]})",
                         "re-export the model") from None
    return PositionMap.build(window=window, boundaries=bounds, scales=scales, original_context=original,
                             selected=selected)


def read_hf_map(export_dir: Path, config: dict[str, Any]) -> PositionMap | None:
    block = config.get(CONFIG_KEY)
    if block is None:
        return None

    def read(name: str) -> bytes:
        from ropeconvert.formats.safe_io import read_bytes  # a regular file only: a FIFO would block

        if not os.path.lexists(Path(export_dir) / name):
            raise InputError(f"{export_dir} lacks {name}, the index map its config.json names",
                             "copy the whole export directory")
        return read_bytes(Path(export_dir) / name, "index map")

    return position_map_from_hf(block, read)


def check_hf_export(export_dir: Path, config: dict[str, Any], spec) -> list[str]:
    """Problems with a written export against its spec (for `ropeconvert verify`)."""
    try:
        written = read_hf_map(export_dir, config)
    except (InputError, SpecError) as e:
        return [f"config.json `{CONFIG_KEY}`: {e.one_line()}"]
    if written is None:
        return [f"config.json has no `{CONFIG_KEY}` block but the spec is a {spec.method} position map"]
    problems = [] if written == spec.position_map else [f"config.json `{CONFIG_KEY}` + index map differ from the spec"]
    if config.get("attn_implementation") != ATTN_NAME:
        problems.append(f"config.json attn_implementation is {config.get('attn_implementation')!r}, not {ATTN_NAME!r}")
    return problems


# ---- GGUF -------------------------------------------------------------------------------------------------------
def approx_freq_factors(pm: PositionMap) -> np.ndarray:
    """The rope_freqs vector llama.cpp runs in place of the map (see the module docstring)."""
    g = pm.pair_scales()
    sel = pm.selected
    share = np.ones(pm.n_pairs) if sel is None else sel.reshape(-1, pm.n_pairs).mean(axis=0)
    return np.where(share >= MAJORITY, g, 1.0).astype(np.float32)


def gguf_parts(spec, arch: str, per_pair: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any], tuple[str, ...]]:
    """(rope tensors, ropeconvert.dpe.* metadata, notes) of a position-map spec for a GGUF of `arch`."""
    if per_pair != "rope_freqs":
        raise UnsupportedError(f"{arch} GGUFs cannot carry the {spec.method} approximation: it needs a rope_freqs "
                               "tensor, which only the llama architecture family loads", "export --to hf")

    pm: PositionMap = spec.position_map
    f = approx_freq_factors(pm)
    meta: dict[str, Any] = {"method": spec.method, "window": pm.window, "group_boundaries": list(pm.boundaries),
                            "scales": [float(s) for s in pm.scales], "approximation": APPROXIMATION}
    if pm.selected is not None:
        meta["selected_shape"] = list(pm.shape)
        meta["selected"] = pm.selected.astype(np.uint8).ravel().tolist()
    note = (f"APPROXIMATION: llama.cpp cannot run {spec.method} exactly; this GGUF carries rope_freqs "
            f"(min {f.min():g}, max {f.max():g}, {int((f != 1).sum())}/{f.size} pairs rescaled, no local window). "
            "The exact map is in the ropeconvert.dpe.* metadata; run the HF export with transformers for the method")
    return {RopeTensors.FREQS: f}, {GGUF_PREFIX + k: v for k, v in meta.items()}, (note,)


def add_gguf_metadata(writer, metadata: dict[str, Any]) -> None:
    from gguf import GGUFValueType as T

    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif key.endswith(".selected"):
            writer.add_key_value(key, value, T.ARRAY, sub_type=T.UINT8)
        elif key.endswith(".scales"):
            writer.add_key_value(key, value, T.ARRAY, sub_type=T.FLOAT32)
        else:
            writer.add_key_value(key, value, T.ARRAY, sub_type=T.UINT32)


def _int(config: dict[str, Any], key: str) -> int:
    from ropeconvert.formats.config_check import INT_FIELDS, positive_int, require  # the one config check

    require(config, (key,), purpose="a position-map export")
    return positive_int("config.json", key, config[key], INT_FIELDS[key])

