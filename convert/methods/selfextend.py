"""Self-Extend ("LLM Maybe LongLM", Jin et al. 2024, arXiv 2401.01325): exact positions for the W nearest keys,
grouped positions ⌊q/G⌋ + W − W/G and ⌊k/G⌋ for the rest (reference/methods.md §4.1).

It is the position map with one group of every pair, all selected: the same runtime as DPE runs it
(validators/dpe_attention.py). A relative distance Δ ≥ W is seen as about W + (Δ − W)/G, so at length N the largest
position the model meets is W + (N − W)/G, which must stay inside the trained length L; the README's rule of
thumb keeps it at (1/2 ~ 2/3)·L. Unless --group-size is given, G is the smallest power of two that brings it to
L/2 (powers of two divide W, where the reference's prefill W − W/G and decode W − W//G agree).
"""
from __future__ import annotations

import math

from ropeconvert.convert.methods._registry import rope_method
from ropeconvert.convert.position_map import PositionMap
from ropeconvert.convert.spec import POSITION_MAP, BaseRope, RopeSpec, SpecError, resolve_target


def default_window(base: BaseRope) -> int:
    """The papers' W = 1024 for 4k–8k models, scaled as L/8 for others."""
    return max(1, base.original_context // 8)


def check_reach(base: BaseRope, window: int, scale: float, target: int, what: str) -> None:
    reach = window + (target - window) / scale
    if reach > base.original_context:
        raise SpecError(f"{what}: at {target} tokens the largest position is W + (N−W)/g = {reach:.0f}, past the "
                        f"trained length {base.original_context}",
                        f"raise the scale to at least {math.ceil((target - window) / (base.original_context - window))}"
                        " or lower --target-context")


@rope_method(
    "selfextend",
    paper="https://arxiv.org/abs/2401.01325",
    summary="Self-Extend: exact positions within a window W, positions grouped by G beyond it (attention-level)",
    kind=POSITION_MAP,
    note=("native rope + config `dpe` block; runs with attn_implementation='ropeconvert_dpe' after import ropeconvert",
          "ropeconvert.dpe.* metadata + a labelled rope_freqs approximation (f_i = G): llama.cpp cannot run it"),
)
def selfextend(base: BaseRope, *, factor: float | None = None, target_context: int | None = None,
               group_size: float | None = None, window: int | None = None) -> RopeSpec:
    W = default_window(base) if window is None else window
    if factor is None and target_context is None:
        if group_size is None:
            raise SpecError("selfextend needs a length or a group size", "pass --factor S, --target-context N or --group-size G")
        target_context = int((base.original_context - W) * group_size + W)  # the longest the model can reach
    s, target = resolve_target(base, factor, target_context)
    if group_size is None:
        half = base.original_context / 2
        group_size = 2.0
        while W < half and W + (target - W) / group_size > half:
            group_size *= 2
    pm = PositionMap.build(window=W, boundaries=(0, base.n_pairs), scales=(group_size,),
                           original_context=base.original_context)
    check_reach(base, W, pm.scales[0], target, "selfextend")
    return RopeSpec(method="selfextend", base=base, target_context=target, rope_theta=base.rope_theta,
                    position_map=pm, params={"factor": s, "group_size": pm.scales[0], "window": pm.window})
