"""DPE, Dimension-Wise Positional Embeddings Manipulation (Lu et al. 2025, arXiv 2504.18857; reference/methods.md §3).

A dimension-grouped Self-Extend: the frequency pairs are split into contiguous groups, each with its own scale g
(found by `ropeconvert search --method dpe`, the paper's effective-length detection), and only the top-k pairs of
each (layer, head) by mean ‖q_i‖·‖k_i‖ are rescaled (key-dimension selection); the others keep their positions.
The map comes either from a search output (--dpe-map) or from --scales with --window/--topk, in which case the
pipeline measures the selection on the model (convert/search/dpe_select.py) and passes it in as `selected`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ropeconvert.convert.methods._registry import rope_method
from ropeconvert.convert.methods.selfextend import default_window
from ropeconvert.convert.position_map import PositionMap, even_boundaries
from ropeconvert.convert.spec import BaseRope, RopeSpec, SpecError, resolve_target
from ropeconvert.errors import InputError

MAP_FORMAT = "ropeconvert.dpe_map/1"  # what `search --method dpe` writes and --dpe-map reads


def parse_scales(value: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
        except ValueError:
            raise SpecError(f"--scales {value!r} is not a comma-separated list of numbers", "e.g. --scales 2,8,2,8") from None
    return tuple(float(v) for v in value)


def read_map_file(path: str | Path) -> tuple[PositionMap, int]:
    """(map, target length) from a search output (dpe_map.json)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--dpe-map {str(p)!r} not found", "pass the dpe_map.json that `ropeconvert search --method dpe` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"--dpe-map {str(p)!r} is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != MAP_FORMAT:
        raise InputError(f"--dpe-map {str(p)!r} is not a {MAP_FORMAT} file", "pass the dpe_map.json a DPE search wrote")
    return PositionMap.from_dict(data["position_map"]), int(data["target_context"])


@rope_method(
    "dpe",
    paper="https://arxiv.org/abs/2504.18857",
    summary="DPE: per-dimension-group Self-Extend scales on the top-k (layer, head) pairs (attention-level)",
    hf="native rope + config `dpe` block + dpe_index_map.safetensors; attn_implementation='ropeconvert_dpe'",
    gguf="ropeconvert.dpe.* metadata + a labelled rope_freqs approximation: llama.cpp cannot run DPE",
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
        params["dpe_map"] = str(dpe_map)
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
