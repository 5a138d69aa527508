"""Dynamic NTK (emozilla 2023; YaRN paper §3.3): the NTK base is recomputed from the current length.

b(l) = b·(α·l/L − (α−1))^(d/(d−2)) for l > L, unchanged below. α is `factor`; it is *not* the target ratio
(at α = 8, l/L = 8 the base grows ×57, pitfall 11), so training-free use wants α around 1–2.
"""
from __future__ import annotations

from ropeconvert.convert.methods._registry import HfRope, need, rope_method
from ropeconvert.convert.spec import DYNAMIC, BaseRope, RopeSpec, resolve_target

HF = HfRope("dynamic", write=lambda spec: {"factor": float(spec.params["factor"])},
            read=lambda rope, config, base: {"factor": need(rope, "factor")})


@rope_method(
    "dynamic",
    paper="https://arxiv.org/abs/2309.00071",
    summary="dynamic NTK: base recomputed per length past the original context (α = factor)",
    kind=DYNAMIC, hf=HF,
)
def dynamic(base: BaseRope, *, factor: float | None = None, target_context: int | None = None) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    return RopeSpec(
        method="dynamic", base=base, target_context=target, rope_theta=base.rope_theta,
        dynamic_factor=s, params={"factor": s},
    )
