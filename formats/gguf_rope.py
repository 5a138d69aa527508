"""THE one place that maps a RopeSpec to GGUF rope metadata and rope tensors (and reads them back).

One writer per rope kind (`spec.kind`, convert/spec.py KINDS; never the method's name), and what each GGUF arch's
graph can load from formats/archs.py. What llama.cpp does with each key is in reference/ecosystem.md §2.1-2.4; every
rule below was checked against the llama.cpp tree vendored in llama-cpp-python 0.3.36 (src/llama-model.cpp
`load_hparams` and `get_rope_factors`, src/llama-context.cpp context setup, src/models/{llama,qwen2,qwen3,phi3,gemma3}.cpp,
ggml-cpu `rope_yarn`):

- `context_length` is what llama.cpp reports as the trained context (n_ctx_train): always the target.
- `rope.scaling.original_context_length` feeds the YaRN ramp and the long/short choice: always the original.
- linear: type linear + factor (ggml multiplies positions by 1/factor).
- theta (ntk), and dynamic with --static (baked at the target length): a new `rope.freq_base`.
- yarn with the default betas 32/1: type yarn + factor. With YaRN active llama.cpp forces its own attention factor
  0.1·ln s + 1 and then multiplies by `rope.scaling.attn_factor`, so a spec attention factor A is written as
  A / (0.1·ln s + 1). GGUF betas are read only by grok/mistral3, so other betas are baked into per-pair factors.
- longrope: `rope_factors_long/short` + type longrope + attn_factor (no YaRN, so the magnitude is attn_factor as is).
  llama.cpp picks long vs short from the *allocated* context per sequence (n_ctx_seq > original), not from the
  length of the text as transformers does.
- llama3, per_pair, and yarn with custom betas: per-pair divisors of θ_i, as `rope_freqs` (llama) or as equal long
  and short factors (phi3, which loads no `rope_freqs`), with no scaling type so nothing is applied twice.
- qwen2/qwen3 pass no factor tensor to ggml_rope_ext: only freq_base, linear and YaRN with default betas exist there.
- gemma3 neither, and its sliding layers take rope.freq_base_swa and no scale but the same attn_factor, so a custom
  attention factor is refused there (formats/gemma3.py).
- position maps (dpe, selfextend) cannot be expressed at all: formats/dpe_format.py writes the exact map as
  `ropeconvert.dpe.*` metadata and a labelled `rope_freqs` approximation (llama arch only).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from gguf import GGUFWriter, Keys, RopeScalingType

from ropeconvert.convert.spec import (DYNAMIC, LINEAR, LLAMA3, LONGROPE, PER_PAIR, POSITION_MAP, THETA, YARN,
                                      RopeSpec)
from ropeconvert.errors import UnsupportedError
from ropeconvert.formats import dpe_format
from ropeconvert.formats.archs import ARCHS, Arch
from ropeconvert.formats.gguf_keys import Keys as RcKeys, RopeTensors

# the names other modules imported from here before formats/gguf_keys.py existed
FREQS, LONG, SHORT = RopeTensors.FREQS, RopeTensors.LONG, RopeTensors.SHORT
SCALE_LINEAR = "{arch}.rope.scale_linear"  # the older linear-factor key llama.cpp still reads (not in gguf.Keys)
DEFAULT_BETAS = (32.0, 1.0)  # llama.cpp's hparams defaults; its GGUF beta keys are ignored for these archs


@dataclass(frozen=True)
class GgufRope:
    """The rope part of a GGUF file: keys (None = absent) and factor tensors (float32, rotary_dim/2 each)."""

    context_length: int
    original_context: int
    freq_base: float
    dimension_count: int
    scaling_type: str = RopeScalingType.NONE.value
    scaling_factor: float | None = None
    attn_factor: float | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)  # extra keys (DPE's ropeconvert.dpe.* map)


def gguf_rope(spec: RopeSpec, arch: str, static: bool = False) -> GgufRope:
    """How `spec` is written for `arch`; raises UnsupportedError (naming the arch and what it takes) when it can't be."""
    if arch not in ARCHS:
        raise UnsupportedError(f"GGUF architecture {arch!r} is not supported for export", f"supported: {', '.join(ARCHS)}")
    common = dict(context_length=spec.target_context, original_context=spec.original_context,
                  dimension_count=spec.base.rotary_dim, freq_base=float(spec.rope_theta))
    rope = _WRITERS[spec.kind](spec, ARCHS[arch], static, common)
    if ARCHS[arch].local_rope and rope.attn_factor is not None:
        # llama.cpp multiplies every layer's rope by rope.scaling.attn_factor, the sliding ones included, which keep
        # an unscaled rope in transformers (formats/gemma3.py)
        raise UnsupportedError(f"{arch} GGUFs cannot carry a custom attention factor ({spec.attention_factor:g}): "
                               "llama.cpp would apply it to the sliding-window layers too",
                               "drop --attention-factor (YaRN's own 0.1·ln s + 1 is written exactly), or export --to hf")
    return rope


def _theta(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    return GgufRope(**common, attn_factor=_unless_one(spec.attention_factor))


def _linear(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    return GgufRope(**common, scaling_type=RopeScalingType.LINEAR.value, scaling_factor=float(spec.scale),
                    attn_factor=_unless_one(spec.attention_factor))


def _dynamic(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    if not static:
        raise UnsupportedError(
            "llama.cpp has no dynamic NTK: a GGUF cannot recompute the base per length",
            "pass --static to bake NTK at the target length (a new rope.freq_base), or use --method ntk / yarn")
    # the base transformers' dynamic NTK uses at the target length, read back from the spec's own frequencies
    theta = float(spec.inv_freq(spec.target_context)[1] ** (-spec.base.rotary_dim / 2))
    return GgufRope(**{**common, "freq_base": theta},
                    notes=(f"dynamic NTK baked at {spec.target_context} tokens: rope.freq_base {theta:.6g} at every length",))


def _yarn(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    s, A = spec.scale, spec.attention_factor
    betas = (float(spec.params.get("beta_fast", 32.0)), float(spec.params.get("beta_slow", 1.0)))
    if betas == DEFAULT_BETAS:
        return GgufRope(**common, scaling_type=RopeScalingType.YARN.value, scaling_factor=float(s),
                        attn_factor=_unless_one(A / (1.0 + 0.1 * math.log(s))))
    note = (f"beta_fast/beta_slow {betas[0]:g}/{betas[1]:g} baked as per-pair factors (llama.cpp ignores GGUF betas "
            f"for {arch.gguf}); they apply at every length")
    return _per_pair(spec, arch, static, common, what="yarn with custom betas", notes=(note,))


def _longrope(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    _need_per_pair(arch, LONGROPE)
    short = spec.short_factors or (1.0,) * spec.base.n_pairs
    return GgufRope(**common, scaling_type=RopeScalingType.LONGROPE.value, attn_factor=_unless_one(spec.attention_factor),
                    tensors={LONG: _f32(spec.factors), SHORT: _f32(short)},
                    notes=("llama.cpp applies the long factors when the allocated context per sequence (-c / "
                           f"n_parallel) exceeds {spec.original_context}, and the short ones otherwise, whatever "
                           "the length of the text",))


def _per_pair(spec: RopeSpec, arch: Arch, static: bool, common: dict, what: str | None = None,
              notes: tuple[str, ...] = ()) -> GgufRope:
    """Static per-pair divisors of the original θ_i (llama3, per_pair, yarn with custom betas): `rope_freqs` where
    the graph loads it, else equal long and short factors, with no scaling type so nothing is applied twice."""
    _need_per_pair(arch, what or spec.method)
    f = _f32(spec.freq_factors(spec.target_context))
    tensors = {FREQS: f} if arch.per_pair == "rope_freqs" else {LONG: f, SHORT: f.copy()}
    kind = RopeScalingType.NONE if arch.per_pair == "rope_freqs" else RopeScalingType.LONGROPE
    return GgufRope(**common, scaling_type=kind.value, attn_factor=_unless_one(spec.attention_factor), tensors=tensors,
                    notes=notes)


def _position_map(spec: RopeSpec, arch: Arch, static: bool, common: dict) -> GgufRope:
    """DPE / Self-Extend: the exact map as metadata + a rope_freqs approximation (formats/dpe_format.py)."""
    tensors, metadata, notes = dpe_format.gguf_parts(spec, arch.gguf, arch.per_pair)
    return GgufRope(**common, tensors=tensors, metadata=metadata, notes=notes)


_WRITERS: dict[str, Callable[[RopeSpec, Arch, bool, dict], GgufRope]] = {
    THETA: _theta, LINEAR: _linear, DYNAMIC: _dynamic, YARN: _yarn, LONGROPE: _longrope, LLAMA3: _per_pair,
    PER_PAIR: _per_pair, POSITION_MAP: _position_map,
}


def add_rope(writer: GGUFWriter, rope: GgufRope, spec: RopeSpec | None = None) -> None:
    """Write the rope keys with gguf's typed setters (tensors are added by the caller, who owns the tensor order)."""
    writer.add_context_length(rope.context_length)
    writer.add_rope_dimension_count(rope.dimension_count)
    writer.add_rope_freq_base(rope.freq_base)
    writer.add_rope_scaling_type(RopeScalingType(rope.scaling_type))
    if rope.scaling_factor is not None:
        writer.add_rope_scaling_factor(rope.scaling_factor)
    writer.add_rope_scaling_orig_ctx_len(rope.original_context)
    if rope.attn_factor is not None:
        writer.add_rope_scaling_attn_factors(rope.attn_factor)
    if spec is not None:
        writer.add_string(RcKeys.SPEC, json.dumps(spec.to_dict(), separators=(",", ":")))
    if rope.metadata:
        dpe_format.add_gguf_metadata(writer, rope.metadata)


def rope_key_names(arch: str) -> set[str]:
    """Every key this module writes or that would change the rope, so a re-extension can drop the old ones."""
    k = Keys.Rope
    keys = {k.FREQ_BASE, k.SCALING_TYPE, k.SCALING_FACTOR, k.SCALING_ATTN_FACTOR, k.SCALING_ORIG_CTX_LEN,
            k.SCALING_FINETUNED, k.SCALING_YARN_LOG_MUL, k.SCALING_YARN_EXT_FACTOR, k.SCALING_YARN_ATTN_FACTOR,
            k.SCALING_YARN_BETA_FAST, k.SCALING_YARN_BETA_SLOW, k.DIMENSION_COUNT, Keys.LLM.CONTEXT_LENGTH}
    return {key.format(arch=arch) for key in keys} | {SCALE_LINEAR.format(arch=arch), RcKeys.SPEC, *dpe_format.GGUF_KEYS}


def read_rope(reader) -> GgufRope:
    """The rope keys (gguf.Keys templates) and rope tensors (gguf_keys.RopeTensors) of an open GGUFReader, as
    llama.cpp reads them: an absent key is llama.cpp's default (freq_base 10000, scaling type linear, original
    context = context_length, rope dimensions = head size); absent scaling/attention factors are None."""
    from ropeconvert.formats.gguf_read import field

    arch = field(reader, "general.architecture")

    def key(name: str, default: Any = None) -> Any:
        return field(reader, name.format(arch=arch), default)

    k = Keys.Rope
    ctx = int(key(Keys.LLM.CONTEXT_LENGTH))
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors if t.name in RopeTensors.ALL}
    n_rot = key(k.DIMENSION_COUNT)
    if n_rot is None:  # llama.cpp's default: the head size
        n_rot = key(Keys.Attention.KEY_LENGTH) or key(Keys.LLM.EMBEDDING_LENGTH) // key(Keys.Attention.HEAD_COUNT)
    return GgufRope(
        context_length=ctx, original_context=int(key(k.SCALING_ORIG_CTX_LEN, ctx)),
        freq_base=float(key(k.FREQ_BASE, 10000.0)), dimension_count=int(n_rot),
        scaling_type=str(key(k.SCALING_TYPE, RopeScalingType.LINEAR.value)),  # llama.cpp's default when absent
        scaling_factor=_opt_float(key(k.SCALING_FACTOR, key(SCALE_LINEAR))),
        attn_factor=_opt_float(key(k.SCALING_ATTN_FACTOR)), tensors=tensors,
    )


def spec_from_gguf(reader) -> RopeSpec | None:
    """The RopeSpec a ropeconvert export was made from (None for other GGUFs)."""
    from ropeconvert.formats.gguf_read import field

    raw = field(reader, RcKeys.SPEC)
    return None if raw is None else RopeSpec.from_dict(json.loads(raw))


def _need_per_pair(arch: Arch, what: str) -> None:
    if arch.per_pair is None:
        raise UnsupportedError(
            f"{arch.gguf} GGUFs cannot express {what}: llama.cpp's {arch.gguf} graph applies no per-pair rope factors",
            f"{arch.gguf} takes: {arch.honours}; or export --to hf")


def _unless_one(x: float) -> float | None:
    return None if abs(x - 1.0) < 1e-9 else float(x)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)
