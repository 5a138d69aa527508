"""YaRN (Peng et al. 2023, arXiv 2309.00071): NTK-by-parts interpolation + attention temperature.

Pair i completes r_i = L·θ_i/2π rotations within the original length L. Pairs with more than `beta_fast` rotations
keep their frequency (extrapolate), pairs with fewer than `beta_slow` are divided by s (PI), and a linear ramp in
*index* space between the two correction dims blends them — in frequency space, as the reference code does:
θ'_i = θ_i·((1−m_i)/s + m_i), i.e. the divisor f_i = 1/((1−m_i)/s + m_i). The temperature multiplies cos and sin
by 0.1·ln s + 1 (Eq. 22), unless `attention_factor` replaces it or DeepSeek-style `mscale`/`mscale_all_dim` are set.
"""
from __future__ import annotations

import math

import numpy as np

from ropeconvert.convert.methods._registry import rope_method
from ropeconvert.convert.spec import BaseRope, RopeSpec, SpecError, resolve_target


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def correction_range(base: BaseRope, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    """Index bounds of the ramp: floor/ceil of the dims with beta_fast / beta_slow rotations (transformers, ggml)."""
    d, b, L = base.rotary_dim, base.rope_theta, base.original_context

    def dim_for(rotations: float) -> float:
        return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(b))

    low, high = math.floor(dim_for(beta_fast)), math.ceil(dim_for(beta_slow))
    return max(low, 0), min(high, d - 1)


def yarn_factors(base: BaseRope, scale: float, beta_fast: float = 32.0, beta_slow: float = 1.0) -> np.ndarray:
    low, high = correction_range(base, beta_fast, beta_slow)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    ramp = np.clip((np.arange(base.n_pairs, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolate = 1.0 - ramp  # 1: keep θ_i, 0: θ_i / s
    return 1.0 / ((1.0 - extrapolate) / scale + extrapolate)


@rope_method(
    "yarn",
    paper="https://arxiv.org/abs/2309.00071",
    summary="YaRN: NTK-by-parts ramp between beta_fast/beta_slow rotations + attention factor 0.1·ln s + 1",
    hf="rope_type yarn + original_max_position_embeddings, betas",
    gguf="rope.scaling.type=yarn (+ attn_factor); non-default betas baked as rope_freqs",
)
def yarn(
    base: BaseRope,
    *,
    factor: float | None = None,
    target_context: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    if not (0 < beta_slow < beta_fast) or not math.isfinite(beta_fast):
        raise SpecError(
            f"yarn needs 0 < beta_slow < beta_fast, got beta_fast={beta_fast:g}, beta_slow={beta_slow:g}",
            "the paper's values are --beta-fast 32 --beta-slow 1 (Mistral: 128 / 2)",
        )
    if attention_factor is not None and (mscale is not None or mscale_all_dim is not None):
        raise SpecError("--attention-factor replaces the mscale formula", "pass it or --mscale/--mscale-all-dim, not both")
    if (mscale is None) != (mscale_all_dim is None):
        raise SpecError("--mscale and --mscale-all-dim go together (DeepSeek style)", "pass both or neither")
    if attention_factor is not None:
        attn = attention_factor
    elif mscale is not None:
        attn = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
    else:
        attn = yarn_mscale(s)
    params = {"factor": s, "beta_fast": float(beta_fast), "beta_slow": float(beta_slow)}
    params.update({k: float(v) for k, v in
                   {"attention_factor": attention_factor, "mscale": mscale, "mscale_all_dim": mscale_all_dim}.items()
                   if v is not None})
    return RopeSpec(
        method="yarn", base=base, target_context=target, rope_theta=base.rope_theta,
        factors=tuple(yarn_factors(base, s, beta_fast, beta_slow)), attention_factor=attn, params=params,
    )
