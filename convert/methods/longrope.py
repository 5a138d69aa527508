"""LongRoPE (Ding et al. 2024, arXiv 2402.13753): searched per-pair rescale factors λ_i (θ'_i = θ_i/λ_i).

Long factors apply past the original length, optional short factors within it (as transformers and Phi-3 do).
The attention factor is the reference code's "su" policy sqrt(1 + ln s / ln L), which the paper does not state but
the released models use (pitfall 1). Factors come from a file (see convert/factor_files.py) or from `search`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ropeconvert.convert.factor_files import FactorSet, load_factor_file
from ropeconvert.convert.methods._registry import HfRope, rope_method
from ropeconvert.convert.spec import LONGROPE, BaseRope, RopeSpec, SpecError, resolve_target


def su_attention_factor(scale: float, original_context: int) -> float:
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original_context))


def _hf_write(spec: RopeSpec) -> dict:
    p = spec.params
    rope = {"long_factor": list(spec.factors), "short_factor": list(spec.short_factors or (1.0,) * spec.base.n_pairs),
            "original_max_position_embeddings": spec.original_context, "factor": float(p["factor"])}
    if "attention_factor" in p:
        # transformers reads attention_factor; vLLM and SGLang read only long_mscale / short_mscale
        # (vllm rotary_embedding/__init__.py get_rope, sglang rotary_embedding/factory.py get_rope)
        a = float(p["attention_factor"])
        rope.update({"attention_factor": a, "long_mscale": a, "short_mscale": a})
    return rope


def _hf_read(rope: dict, config: dict, base: BaseRope) -> dict:
    # transformers: factor from the dict, else max_position_embeddings / original
    scale = rope.get("factor") or config.get("max_position_embeddings", 0) / base.original_context
    return {"factors": rope["long_factor"], "short_factors": rope.get("short_factor"), "factor": float(scale),
            "attention_factor": rope.get("attention_factor"), "allow_non_monotone": True}


@rope_method(
    "longrope",
    paper="https://arxiv.org/abs/2402.13753",
    summary="LongRoPE: searched per-pair factors (long + optional short) + attention factor sqrt(1+ln s/ln L)",
    kind=LONGROPE, hf=HfRope("longrope", _hf_write, _hf_read, aliases=("su",)),
)
def longrope(
    base: BaseRope,
    *,
    factors: str | Path | Sequence[float] | None = None,
    short_factors: str | Path | Sequence[float] | None = None,
    factor: float | None = None,
    target_context: int | None = None,
    attention_factor: float | None = None,
    allow_non_monotone: bool = False,
) -> RopeSpec:
    if factors is None:
        raise SpecError("longrope needs factors", "pass --factors FILE (a CSV/JSON list, a Phi-3 config.json, or the output of `ropeconvert search`)")
    long_set = _as_set(factors)
    if long_set.original_context and long_set.original_context != base.original_context:
        raise SpecError(
            f"the factor file was made for an original context of {long_set.original_context}, "
            f"but the model's is {base.original_context}",
            f"pass --original-context {long_set.original_context} if the model was really trained at that length",
        )
    short = long_set.short
    if short_factors is not None:
        short = _as_set(short_factors).long
    if short is None:  # within the original length the model keeps its own rope, as transformers does
        short = (1.0,) * base.n_pairs
    if factor is None and target_context is None:
        if long_set.target_context is None:
            raise SpecError("longrope needs the target length", "pass --factor S or --target-context N")
        target_context = long_set.target_context
    s, target = resolve_target(base, factor, target_context)
    attn = su_attention_factor(s, base.original_context) if attention_factor is None else attention_factor
    params = {"factor": s, "factors": _describe(factors)}
    if short_factors is not None:
        params["short_factors"] = _describe(short_factors)
    if attention_factor is not None:
        params["attention_factor"] = float(attention_factor)
    return RopeSpec(
        method="longrope", base=base, target_context=target, rope_theta=base.rope_theta,
        factors=long_set.long, short_factors=short, attention_factor=attn, params=params,
        require_monotone=not allow_non_monotone,
    )


def _as_set(value) -> FactorSet:
    if isinstance(value, (str, Path)):
        return load_factor_file(value)
    return FactorSet(long=tuple(float(v) for v in value))


def _describe(value) -> str:
    """What the manifest records of a factor source: a file's name, never its machine path (exports are published)."""
    return Path(value).name if isinstance(value, (str, Path)) else f"{len(value)} values"
