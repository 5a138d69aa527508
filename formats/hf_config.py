"""THE one place that maps between a RopeSpec and an HF config.json (both directions).

The written form is the portable one of DESIGN.md / reference/ecosystem.md §4, read identically by transformers 4.x
(`rope_scaling`) and 5.x (where a legacy `rope_scaling` key wins over `rope_parameters`), vLLM and SGLang:
top-level `rope_theta`; the dict under `rope_scaling` with `rope_type` and the same `type`, `rope_theta` repeated
inside, float factors; `original_max_position_embeddings` inside the dict and consistent at top level;
`max_position_embeddings` = target for yarn/longrope/llama3/ntk and = original for linear/dynamic (both of which
multiply it by `factor` in vLLM/SGLang, and transformers' dynamic NTK switches on past it).

Encodings chosen so that every runtime that can express a method reads the same numbers (formats/runtimes.py has
the per-runtime rules and the source each was read from):
- ntk writes no `rope_scaling` at all, only the new `rope_theta`: a `{"rope_type": "default"}` dict without `factor`
  is refused by mistral.rs, and every runtime reads a plain rope from `rope_theta` alone.
- yarn's custom attention factor A is written as `mscale = (A·(1+0.1 ln s) − 1)/(0.1 ln s)`, `mscale_all_dim = 1`:
  transformers, vLLM, SGLang and mlx-lm all compute mscale(s, m)/mscale(s, 1) = A, whereas `attention_factor` is
  read by transformers and vLLM only (SGLang reads `attn_factor`, mlx-lm neither).
- longrope's custom attention factor is written as `attention_factor` (transformers) and again as
  `long_mscale`/`short_mscale` (vLLM and SGLang read only those).
"""
from __future__ import annotations

import copy
import math
from typing import Any

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.config_check import check_config, require

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
# keys that describe the rope; everything else in config.json is carried over untouched
_ROPE_KEYS = ("rope_scaling", "rope_parameters", "original_max_position_embeddings")


def rope_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The config's rope dict (v4 `rope_scaling` wins over v5 `rope_parameters`, as transformers 5 does); its
    contents were validated by config_check (which refuses per-layer-type dicts)."""
    check_config(config)
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def rope_type(config: dict[str, Any]) -> str:
    rope = rope_dict(config)
    return str(rope.get("rope_type") or rope.get("type") or "default")


def base_rope_from_config(config: dict[str, Any], original_context: int | None = None) -> BaseRope:
    """The rope the model was trained with. Raises InputError naming a missing or malformed key."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedError(
            f"unsupported architecture model_type={model_type!r}",
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama, Mistral, Qwen2/3, Phi-3, SmolLM families)",
        )
    check_config(config)  # the one validating layer (a no-op re-check for configs read from disk)
    require(config, ("hidden_size", "num_attention_heads"), purpose="the rope")
    rope = rope_dict(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    partial = rope.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0
    thetas = [t for t in (config.get("rope_theta"), rope.get("rope_theta")) if t is not None]
    if len(thetas) == 2 and thetas[0] != thetas[1]:
        raise InputError(f"config.json: top-level rope_theta {thetas[0]:g} disagrees with {thetas[1]:g} in the rope dict",
                         "make them equal (runtimes differ in which one they read)")
    theta = thetas[-1] if thetas else 10000.0  # transformers' default when a config names none
    if original_context is None:
        original_context = rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        if original_context is None:
            require(config, ("max_position_embeddings",), purpose="the trained context length")
            original_context = config["max_position_embeddings"]
    return BaseRope(
        head_dim=int(head_dim), rotary_dim=int(int(head_dim) * float(partial)), rope_theta=float(theta),
        original_context=int(original_context), arch=str(model_type),
    )


def hf_config_for(spec: RopeSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` whose rope is exactly `spec`, in the portable form."""
    if spec.position_map is not None:  # DPE / Self-Extend: native rope kept, the map in its own block
        from ropeconvert.formats.dpe_format import hf_config as position_map_config

        return position_map_config(spec, config)
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in _ROPE_KEYS}
    L, target, p = spec.original_context, spec.target_context, spec.params
    out["rope_theta"] = float(spec.rope_theta)
    rope: dict[str, Any]
    if spec.method == "ntk":  # plain rope with the new base: no rope dict at all (see the module docstring)
        out["max_position_embeddings"] = int(target)
        return out
    elif spec.method in ("linear", "dynamic"):
        rope, max_pos = {"rope_type": spec.method, "factor": float(p["factor"])}, L
    elif spec.method == "yarn":
        rope = {"rope_type": "yarn", "factor": float(p["factor"]), "original_max_position_embeddings": L,
                "beta_fast": float(p["beta_fast"]), "beta_slow": float(p["beta_slow"])}
        rope.update({k: float(p[k]) for k in ("mscale", "mscale_all_dim") if k in p})
        if "attention_factor" in p:
            rope.update(_yarn_attention_as_mscale(float(p["attention_factor"]), float(p["factor"])))
        max_pos = target
    elif spec.method == "llama3":
        rope = {"rope_type": "llama3", "factor": float(p["factor"]), "low_freq_factor": float(p["low_freq_factor"]),
                "high_freq_factor": float(p["high_freq_factor"]), "original_max_position_embeddings": L}
        max_pos = target
    elif spec.method == "longrope":
        rope = {"rope_type": "longrope", "long_factor": list(spec.factors),
                "short_factor": list(spec.short_factors or (1.0,) * spec.base.n_pairs),
                "original_max_position_embeddings": L, "factor": float(p["factor"])}
        if "attention_factor" in p:
            # transformers reads attention_factor; vLLM and SGLang read only long_mscale / short_mscale
            # (vllm rotary_embedding/__init__.py get_rope, sglang rotary_embedding/factory.py get_rope)
            a = float(p["attention_factor"])
            rope.update({"attention_factor": a, "long_mscale": a, "short_mscale": a})
        max_pos = target
        if config.get("model_type") == "phi3":
            # transformers 4.x Phi3Config accepts exactly these three keys (ecosystem.md §1.5)
            if "attention_factor" in p:
                raise UnsupportedError("phi3 configs cannot carry a custom attention factor in transformers 4.x",
                                       "drop --attention-factor")
            rope = {"type": "longrope", "long_factor": rope["long_factor"], "short_factor": rope["short_factor"]}
    else:
        raise UnsupportedError(f"method {spec.method!r} has no HF config mapping")
    if "type" not in rope:
        rope["type"] = rope["rope_type"]
        rope["rope_theta"] = float(spec.rope_theta)
    out["rope_scaling"] = rope
    if "original_max_position_embeddings" in rope or spec.method == "longrope":
        out["original_max_position_embeddings"] = L
    out["max_position_embeddings"] = int(max_pos)
    return out


def _yarn_attention_as_mscale(attention: float, factor: float) -> dict[str, float]:
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


def spec_from_hf_config(config: dict[str, Any], original_context: int | None = None) -> RopeSpec | None:
    """Read the rope scaling an HF config carries back into a RopeSpec (None for plain RoPE)."""
    kind = rope_type(config)
    if kind == "default":
        return None
    rope = rope_dict(config)
    base = base_rope_from_config(config, original_context)
    factor = rope.get("factor")
    try:
        if kind in ("linear", "dynamic"):
            return build_spec(kind, base, factor=_float(factor, "factor"))
        if kind == "yarn":
            return build_spec(
                "yarn", base, factor=_float(factor, "factor") if factor else None,
                target_context=None if factor else config.get("max_position_embeddings"),
                beta_fast=rope.get("beta_fast") or 32.0, beta_slow=rope.get("beta_slow") or 1.0,
                attention_factor=rope.get("attention_factor"),
                mscale=rope.get("mscale") if rope.get("mscale_all_dim") else None,
                mscale_all_dim=rope.get("mscale_all_dim") if rope.get("mscale") else None,
            )
        if kind == "llama3":
            return build_spec("llama3", base, factor=_float(factor, "factor"),
                              low_freq_factor=rope["low_freq_factor"], high_freq_factor=rope["high_freq_factor"])
        if kind in ("longrope", "su"):
            # transformers: factor from the dict, else max_position_embeddings / original
            scale = factor or config.get("max_position_embeddings", 0) / base.original_context
            return build_spec("longrope", base, factors=rope["long_factor"], short_factors=rope.get("short_factor"),
                              factor=float(scale), attention_factor=rope.get("attention_factor"),
                              allow_non_monotone=True)
    except KeyError as e:
        raise InputError(f"config.json: rope_scaling of type {kind!r} lacks {e.args[0]!r}",
                         "give the complete rope_scaling the model was published with") from None
    raise UnsupportedError(f"config.json: rope type {kind!r} is not supported",
                           "supported: default, linear, dynamic, yarn, longrope, llama3")


def _float(value: Any, name: str) -> float:
    """A required rope number (its type and range were checked by config_check): absent is a missing key."""
    if value is None:
        raise KeyError(name)
    return float(value)
