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

from ropeconvert.convert.methods._registry import HfRope, need, rope_method
from ropeconvert.convert.spec import YARN, BaseRope, RopeSpec, SpecError, resolve_target


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


def attention_as_mscale(attention: float, factor: float) -> dict[str, float]:
    """A YaRN attention factor in the one form all four HF-config runtimes honour: transformers
    (`_compute_yarn_parameters`), vLLM and SGLang (`YaRNScalingRotaryEmbedding`) and mlx-lm (`YarnRoPE`) compute
    attention = (0.1·m·ln s + 1)/(0.1·1·ln s + 1) when both mscale and mscale_all_dim are set; solve for m."""
    t = 0.1 * math.log(factor)
    m = (attention * (1 + t) - 1) / t
    if abs(m) < 1e-9:
        # m = 0 is falsy: transformers would fall back to its default formula. Only transformers and vLLM read
        # attention_factor, which formats/runtimes.py reports for this one value.
        return {"attention_factor": attention}
    return {"mscale": m, "mscale_all_dim": 1.0}


def _hf_write(spec: RopeSpec) -> dict:
    p = spec.params
    rope = {"factor": float(p["factor"]), "original_max_position_embeddings": spec.original_context,
            "beta_fast": float(p["beta_fast"]), "beta_slow": float(p["beta_slow"])}
    rope.update({k: float(p[k]) for k in ("mscale", "mscale_all_dim") if k in p})
    if "attention_factor" in p:
        rope.update(attention_as_mscale(float(p["attention_factor"]), float(p["factor"])))
    return rope


def _hf_read(rope: dict, config: dict, base: BaseRope) -> dict:
    factor = rope.get("factor")
    return {"factor": need(rope, "factor") if factor else None,
            "target_context": None if factor else config.get("max_position_embeddings"),
            "beta_fast": rope.get("beta_fast") or 32.0, "beta_slow": rope.get("beta_slow") or 1.0,
            "attention_factor": rope.get("attention_factor"),
            "mscale": rope.get("mscale") if rope.get("mscale_all_dim") else None,
            "mscale_all_dim": rope.get("mscale_all_dim") if rope.get("mscale") else None}


@rope_method(
    "yarn",
    paper="https://arxiv.org/abs/2309.00071",
    summary="YaRN: NTK-by-parts ramp between beta_fast/beta_slow rotations + attention factor 0.1·ln s + 1",
    kind=YARN, hf=HfRope("yarn", _hf_write, _hf_read),
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
