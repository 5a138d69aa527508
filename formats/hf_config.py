"""THE one place that maps between a RopeSpec and an HF config.json (both directions).

Each method declares its own rope dict next to its function (`HfRope` in convert/methods/_registry.py, keyed by
transformers' `rope_type`); this module adds only the portable envelope of DESIGN.md / reference/ecosystem.md §4,
read identically by transformers 4.x (`rope_scaling`) and 5.x (where a legacy `rope_scaling` key wins over
`rope_parameters`), vLLM and SGLang: top-level `rope_theta`; the dict under `rope_scaling` with `rope_type` and the
same `type`, `rope_theta` repeated inside, float factors; `original_max_position_embeddings` consistent at top level;
`max_position_embeddings` = target, except = original for the linear and dynamic kinds (both of which multiply it by
`factor` in vLLM/SGLang, and transformers' dynamic NTK switches on past it) — for Gemma 3 (`local_rope`) only for
dynamic: its runtimes never apply the factor, so linear gets the target and a top-level
`original_max_position_embeddings` that reads it back. A kind with no native rope_type
(per_pair, or a method that declares none) gets the generic per-pair form, longrope with long = short factors.
Reading back is driven by the same table: rope_type → the method that declared it.

Encodings chosen so that every runtime that can express a method reads the same numbers (formats/runtimes.py has
the per-runtime rules and the source each was read from):
- the theta kind (ntk) writes no `rope_scaling` at all, only the new `rope_theta`: a `{"rope_type": "default"}` dict
  without `factor` is refused by mistral.rs, and every runtime reads a plain rope from `rope_theta` alone.
- yarn's custom attention factor A is written as `mscale = (A·(1+0.1 ln s) − 1)/(0.1 ln s)`, `mscale_all_dim = 1`
  (convert/methods/yarn.py `attention_as_mscale`): transformers, vLLM, SGLang and mlx-lm all compute
  mscale(s, m)/mscale(s, 1) = A, whereas `attention_factor` is read by transformers and vLLM only (SGLang reads
  `attn_factor`, mlx-lm neither).
- longrope's custom attention factor is written as `attention_factor` (transformers) and again as
  `long_mscale`/`short_mscale` (vLLM and SGLang read only those).
"""
from __future__ import annotations

import copy
from typing import Any

from ropeconvert.convert.methods import METHODS, build_spec
from ropeconvert.convert.methods.longrope import su_attention_factor
from ropeconvert.convert.spec import DYNAMIC, LINEAR, POSITION_MAP, THETA, BaseRope, RopeSpec
from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.archs import MODEL_TYPES, for_model_type
from ropeconvert.formats.config_check import check_config, global_rope, require
from ropeconvert.formats.dpe_format import hf_config as position_map_config

# keys that describe the rope; everything else in config.json is carried over untouched
_ROPE_KEYS = ("rope_scaling", "rope_parameters", "original_max_position_embeddings", "rope_local_base_freq")
_MAX_POS_ORIGINAL = (LINEAR, DYNAMIC)  # kinds whose max_position_embeddings stays the original length
_MAX_POS_ORIGINAL_LOCAL = (DYNAMIC,)  # the same for local-rope archs (Gemma 3: runtimes.py `_local_rope_rule`)


def rope_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The config's rope dict (v4 `rope_scaling` wins over v5 `rope_parameters`, as transformers 5 does); its
    contents were validated by config_check (which refuses per-layer-type dicts)."""
    check_config(config)
    return global_rope(config) or {}


def rope_type(config: dict[str, Any]) -> str:
    rope = rope_dict(config)
    return str(rope.get("rope_type") or rope.get("type") or "default")


def base_rope_from_config(config: dict[str, Any], original_context: int | None = None) -> BaseRope:
    """The rope the model was trained with. Raises InputError naming a missing or malformed key."""
    model_type = config.get("model_type")
    for_model_type(model_type)  # refuses an unsupported architecture, naming the supported ones
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
    """A copy of `config` whose rope is exactly `spec`, in the portable form: the method's own rope dict (its
    `HfRope`) or its kind's generic one, inside the envelope every runtime reads."""
    arch = MODEL_TYPES[config["model_type"]] if config.get("model_type") in MODEL_TYPES else None
    if spec.kind == POSITION_MAP:  # DPE / Self-Extend: native rope kept, the map in its own block
        if arch is not None and not arch.position_map:
            raise UnsupportedError(f"ropeconvert's DPE attention does not run {config['model_type']} (its fused "
                                   f"qkv projection): an HF {config['model_type']} export cannot carry {spec.method}",
                                   "use --method longrope or ntk for this model")
        return position_map_config(spec, config)
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in _ROPE_KEYS}
    L, target = spec.original_context, spec.target_context
    out["rope_theta"] = float(spec.rope_theta)
    if spec.kind == THETA:  # plain rope with the new base: no rope dict at all (see the module docstring)
        out["max_position_embeddings"] = int(target)
        if arch is not None and arch.keeps_original:
            out["original_max_position_embeddings"] = L
        return _layer_ropes(out, config, arch)
    hf = _native(spec)
    rope = {"rope_type": hf.rope_type, **hf.write(spec)} if hf is not None else _per_pair_rope(spec)
    if arch is not None and arch.hf_rope_types is not None and rope["rope_type"] not in arch.hf_rope_types:
        raise UnsupportedError(
            f"transformers' {arch.hf_class} config takes only rope type {', '.join(arch.hf_rope_types)}: an HF "
            f"{config['model_type']} export cannot carry {spec.method}",
            "use --method longrope or ntk for an HF export, or --to gguf (llama.cpp runs this rope)")
    needs_original = "original_max_position_embeddings" in rope
    if config.get("model_type") == "phi3" and rope["rope_type"] == "longrope":
        rope = _phi3_longrope(rope, spec)
    if "type" not in rope:
        rope["type"] = rope["rope_type"]
        rope["rope_theta"] = float(spec.rope_theta)
    out["rope_scaling"] = rope
    original = _MAX_POS_ORIGINAL_LOCAL if arch is not None and arch.local_rope else _MAX_POS_ORIGINAL
    if needs_original or (spec.kind in _MAX_POS_ORIGINAL and spec.kind not in original):
        out["original_max_position_embeddings"] = L
    out["max_position_embeddings"] = int(L if spec.kind in original else target)
    return _layer_ropes(out, config, arch)


def _layer_ropes(out: dict[str, Any], config: dict[str, Any], arch) -> dict[str, Any]:
    """Archs whose sliding layers keep their own rope (Gemma 3) also get the per-layer-type form (formats/gemma3.py)."""
    if arch is not None and arch.local_rope:
        from ropeconvert.formats.gemma3 import add_layer_ropes

        add_layer_ropes(out, config)
    return out


def _native(spec: RopeSpec):
    """The spec's method's own HF mapping, if it has one for the spec's kind; None = the kind's generic form."""
    info = METHODS.get(spec.method) if spec.method in METHODS else None
    if info is not None and info.hf is not None and info.kind == spec.kind:
        return info.hf
    if spec.factors is None:  # dynamic from a method this install does not know: no generic form exists
        raise UnsupportedError(f"method {spec.method!r} ({spec.kind}) has no HF config mapping")
    return None


def _per_pair_rope(spec: RopeSpec) -> dict[str, Any]:
    """Arbitrary per-pair divisors in the one HF form that carries them exactly: longrope with the factors as both
    long and short sets (short = the spec's own where it has them) and the attention factor always written —
    transformers' `_compute_longrope_parameters` computes sqrt(1 + ln s/ln L) when it is absent, and reads the short
    set up to the original length, the long one past it. vLLM and SGLang read the factor as long_mscale/short_mscale."""
    a = float(spec.attention_factor)
    return {"rope_type": "longrope", "long_factor": list(spec.factors),
            "short_factor": list(spec.short_factors or spec.factors),
            "original_max_position_embeddings": spec.original_context, "factor": float(spec.scale),
            "attention_factor": a, "long_mscale": a, "short_mscale": a}


def _phi3_longrope(rope: dict[str, Any], spec: RopeSpec) -> dict[str, Any]:
    """transformers 4.x Phi3Config accepts exactly three longrope keys (ecosystem.md §1.5); it then computes the
    attention factor sqrt(1 + ln s/ln L) itself, so a rope with any other one cannot be written for phi3."""
    computed = su_attention_factor(spec.scale, spec.original_context)
    if "attention_factor" in rope and abs(rope["attention_factor"] - computed) > 1e-9:
        raise UnsupportedError("phi3 configs cannot carry a custom attention factor in transformers 4.x",
                               "drop --attention-factor")
    return {"type": "longrope", "long_factor": rope["long_factor"], "short_factor": rope["short_factor"]}


def hf_readers() -> dict[str, Any]:
    """rope_type → the registered method that reads it back (transformers' ROPE_INIT_FUNCTIONS keys)."""
    out: dict[str, Any] = {}
    for name, info in METHODS.items():
        for t in (info.hf.rope_type, *info.hf.aliases) if info.hf is not None else ():
            out.setdefault(t, info)
    return out


def spec_from_hf_config(config: dict[str, Any], original_context: int | None = None) -> RopeSpec | None:
    """Read the rope scaling an HF config carries back into a RopeSpec (None for plain RoPE)."""
    kind = rope_type(config)
    if kind == "default":
        return None
    rope = rope_dict(config)
    base = base_rope_from_config(config, original_context)
    readers = hf_readers()
    if kind not in readers:
        raise UnsupportedError(f"config.json: rope type {kind!r} is not supported",
                               f"supported: default, {', '.join(t for t, m in readers.items() if t == m.hf.rope_type)}")
    info = readers[kind]
    try:
        knobs = info.hf.read(rope, config, base)
    except KeyError as e:
        raise InputError(f"config.json: rope_scaling of type {kind!r} lacks {e.args[0]!r}",
                         "give the complete rope_scaling the model was published with") from None
    return build_spec(info.name, base, **knobs)


