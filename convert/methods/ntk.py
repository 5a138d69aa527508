"""Static NTK-aware scaling (bloc97 2023; YaRN paper Def. 1): a larger base, b' = b·s^(d/(d−2)).

The exponent makes the lowest frequency pair match PI exactly while the highest pairs stay almost untouched.
"""
from __future__ import annotations

from ropeconvert.convert.methods._registry import rope_method
from ropeconvert.convert.spec import THETA, BaseRope, RopeSpec, resolve_target


# a plain rope with a new base: no HF rope dict (a config names the base in rope_theta alone)
@rope_method(
    "ntk",
    paper="https://arxiv.org/abs/2309.00071",
    summary="static NTK-aware: new rope_theta = θ·s^(d/(d−2)), same at every length",
    kind=THETA,
)
def ntk(base: BaseRope, *, factor: float | None = None, target_context: int | None = None) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    d = base.rotary_dim
    return RopeSpec(
        method="ntk", base=base, target_context=target,
        rope_theta=base.rope_theta * s ** (d / (d - 2)), params={"factor": s},
    )
