"""Position Interpolation (Chen et al. 2023): every frequency divided by the scale s."""
from __future__ import annotations

from ropeconvert.convert.methods._registry import HfRope, need, rope_method
from ropeconvert.convert.spec import LINEAR, BaseRope, RopeSpec, resolve_target

HF = HfRope("linear", write=lambda spec: {"factor": float(spec.params["factor"])},
            read=lambda rope, config, base: {"factor": need(rope, "factor")})


@rope_method(
    "linear",
    paper="https://arxiv.org/abs/2306.15595",
    summary="Position Interpolation: positions divided by s (f_i = s for every pair)",
    kind=LINEAR, hf=HF,
)
def linear(base: BaseRope, *, factor: float | None = None, target_context: int | None = None) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    return RopeSpec(
        method="linear", base=base, target_context=target, rope_theta=base.rope_theta,
        factors=(s,) * base.n_pairs, params={"factor": s},
    )
