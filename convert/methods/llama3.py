"""Llama-3.1 wavelength-band scaling (Meta 2024; transformers `_compute_llama3_parameters`).

Pairs whose wavelength is below L/high_freq_factor keep their frequency, those above L/low_freq_factor are divided
by `factor`, and the band in between blends the two in frequency space.
"""
from __future__ import annotations

import math

import numpy as np

from ropeconvert.convert.methods._registry import HfRope, need, rope_method
from ropeconvert.convert.spec import LLAMA3, BaseRope, RopeSpec, SpecError, resolve_target


def _hf_write(spec: RopeSpec) -> dict:
    p = spec.params
    return {"factor": float(p["factor"]), "low_freq_factor": float(p["low_freq_factor"]),
            "high_freq_factor": float(p["high_freq_factor"]), "original_max_position_embeddings": spec.original_context}


def _hf_read(rope: dict, config: dict, base: BaseRope) -> dict:
    return {"factor": need(rope, "factor"), "low_freq_factor": rope["low_freq_factor"],
            "high_freq_factor": rope["high_freq_factor"]}


@rope_method(
    "llama3",
    paper="https://arxiv.org/abs/2407.21783",
    summary="Llama-3.1 bands: high frequencies kept, low divided by s, smooth blend between",
    kind=LLAMA3, hf=HfRope("llama3", _hf_write, _hf_read),
)
def llama3(
    base: BaseRope,
    *,
    factor: float | None = None,
    target_context: int | None = None,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    if not (0 < low_freq_factor < high_freq_factor) or not math.isfinite(high_freq_factor):
        raise SpecError(
            f"llama3 needs 0 < low_freq_factor < high_freq_factor, got {low_freq_factor:g} and {high_freq_factor:g}",
            "the Llama-3.1 values are --low-freq-factor 1 --high-freq-factor 4",
        )
    L = base.original_context
    wavelen = 2 * math.pi / base.inv_freq()
    smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1 - smooth) / s + smooth)  # blend of θ/s and θ, written as a divisor
    f = np.where(wavelen < L / high_freq_factor, 1.0, np.where(wavelen > L / low_freq_factor, s, blended))
    return RopeSpec(
        method="llama3", base=base, target_context=target, rope_theta=base.rope_theta,
        factors=tuple(f), params={"factor": s, "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor},
    )
