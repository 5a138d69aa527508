"""DPE, Dimension-Wise Positional Embeddings Manipulation (Lu et al. 2025, arXiv 2504.18857; reference/methods.md §3).

A dimension-grouped Self-Extend: the frequency pairs are split into contiguous groups, each with its own scale g
(found by `ropeconvert search --method dpe`, the paper's effective-length detection), and only the top-k pairs of
each (layer, head) by mean ‖q_i‖·‖k_i‖ are rescaled (key-dimension selection); the others keep their positions.
The map comes either from a search output (--dpe-map) or from --scales with --window/--topk, in which case the
pipeline measures the selection on the model (convert/search/dpe_select.py) and passes it in as `selected`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ropeconvert.convert.factor_files import parse_number
from ropeconvert.convert.methods._registry import rope_method
from ropeconvert.convert.methods.selfextend import default_window
from ropeconvert.convert.position_map import PositionMap, even_boundaries
from ropeconvert.convert.spec import POSITION_MAP, BaseRope, RopeSpec, SpecError, resolve_target
from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import MAX_CONTEXT, positive_int, show
from ropeconvert.formats.safe_io import read_json

MAP_FORMAT = "ropeconvert.dpe_map/1"  # what `search --method dpe` writes and --dpe-map reads


def parse_scales(value: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, str):
        parsed = tuple(parse_number(v) for v in value.replace(" ", "").split(",") if v)
        if None in parsed or not parsed:  # parse_number: plain decimals only (float() would take "1_0" as 10)
            raise SpecError(f"--scales {show(value)} is not a comma-separated list of numbers", "e.g. --scales 2,8,2,8")
        return parsed
    return tuple(float(v) for v in value)


def read_map_file(path: str | Path) -> tuple[PositionMap, int]:
    """(map, target length) from a search output (dpe_map.json)."""
    p = Path(path)
    fix = "pass the dpe_map.json that `ropeconvert search --method dpe` wrote"
    data = read_json(p, "--dpe-map", fix)
    if not isinstance(data, dict) or data.get("format") != MAP_FORMAT:
        raise InputError(f"--dpe-map {p} is not a {MAP_FORMAT} file", fix)
    pm = data.get("position_map")
    if not isinstance(pm, dict):
        raise InputError(f"--dpe-map {p} has no position_map object", fix)
    for key in ("window", "original_context"):
        positive_int(f"--dpe-map {p}", f"position_map.{key}", pm.get(key), MAX_CONTEXT, fix)
    for key, kind in (("boundaries", "a list of integers"), ("scales", "a list of numbers"),
                      ("shape", "a list of integers or null"), ("selected", "a list of hex strings or null")):
        value = pm.get(key)  # PositionMap itself checks the values; here only that each is the right sort of list
        if value is None and key in ("shape", "selected"):
            continue
        item = str if key == "selected" else ((int, float) if key == "scales" else int)
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise InputError(f"--dpe-map {p}: position_map.{key} must be {kind}, got {show(value)}", fix)
    target = positive_int(f"--dpe-map {p}", "target_context", data.get("target_context"), MAX_CONTEXT, fix)
    return PositionMap.from_dict(data["position_map"]), target


@rope_method(
    "dpe",
    paper="https://arxiv.org/abs/2504.18857",
    summary="DPE: per-dimension-group Self-Extend scales on the top-k (layer, head) pairs (attention-level)",
    kind=POSITION_MAP,
    note=("native rope + config `dpe` block + dpe_index_map.safetensors; attn_implementation='ropeconvert_dpe'",
          "ropeconvert.dpe.* metadata + a labelled rope_freqs approximation: llama.cpp cannot run DPE"),
)
def dpe(base: BaseRope, *, factor: float | None = None, target_context: int | None = None,
        window: int | None = None, scales: str | Sequence[float] | None = None, topk: int | None = None,
        dpe_map: str | Path | None = None, selected: np.ndarray | None = None) -> RopeSpec:
    params: dict = {}
    if dpe_map is not None:
        if any(v is not None for v in (window, scales, topk, selected)):
            raise SpecError("--dpe-map already holds the window, scales and selection", "drop --window/--scales/--topk")
        pm, map_target = read_map_file(dpe_map)
        if pm.original_context != base.original_context:
            raise SpecError(f"the map was made for an original context of {pm.original_context}, the model's is "
                            f"{base.original_context}", f"pass --original-context {pm.original_context} if that is right")
        if factor is None and target_context is None:
            target_context = map_target
        params["dpe_map"] = Path(dpe_map).name  # its name, never a machine path (exports are published)
    else:
        if scales is None:
            raise SpecError("dpe needs one scale per dimension group",
                            "pass --scales g1,g2,… (e.g. from `ropeconvert search --method dpe`) or --dpe-map FILE")
        g = parse_scales(scales)
        if topk is not None and selected is None:
            raise SpecError("--topk needs the model to measure ‖q_i‖·‖k_i‖",
                            "run it through `ropeconvert MODEL --method dpe …`, which measures the selection")
        if selected is not None:
            sel = np.asarray(selected, dtype=bool)
            if sel.ndim != 3 or sel.shape[-1] != base.n_pairs:
                raise SpecError(f"selection mask has shape {list(sel.shape)}, expected [layers, heads, {base.n_pairs}]")
        pm = PositionMap.build(window=default_window(base) if window is None else window,
                               boundaries=even_boundaries(base.n_pairs, len(g)), scales=g,
                               original_context=base.original_context, selected=selected)
        params.update(window=pm.window, scales=",".join(f"{s:g}" for s in pm.scales))
        if topk is not None:
            params["topk"] = int(topk)
    if pm.n_pairs != base.n_pairs:
        raise SpecError(f"the map covers {pm.n_pairs} frequency pairs, the model has {base.n_pairs}",
                        "rebuild the map for this model")
    s, target = resolve_target(base, factor, target_context)
    return RopeSpec(method="dpe", base=base, target_context=target, rope_theta=base.rope_theta, position_map=pm,
                    params={"factor": s, **params})
