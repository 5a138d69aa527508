"""`--stack`: extend an already-extended model again (LongRoPE's progressive extension, arXiv 2402.13753 §3.3).

The source already runs a rope E (read back from its config.json or ropeconvert GGUF spec): the original base θ_i
divided by per-pair divisors E_i, trained or tuned up to its target L'. The new method N is built as if the source
were a plain model trained at L' with E's base, so N's own divisors N_i are those of a method extending L' (YaRN's
ramp counts rotations within L', llama3's bands are wavelengths against L'). Applying N to the model as it runs
gives θ_i / (E_i·N_i): the stacked spec holds the product, relative to the ORIGINAL θ_i, on the source's own base
(its trained length, e.g. 8192 for Llama-3.1), so every writer and validator reads it like any per-pair rope.
Refused, in one line naming the pair: no fixed divisors on either side (dynamic, position maps), nothing to stack
on, and long/short sets that cannot both be kept (see `_check_sets`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ropeconvert.convert.methods import METHODS
from ropeconvert.convert.spec import DYNAMIC, LONGROPE, PER_PAIR, POSITION_MAP, BaseRope, RopeSpec
from ropeconvert.errors import SpecError, UnsupportedError

# kinds with no per-pair divisors to multiply, and why
_NO_DIVISORS = {
    DYNAMIC: "recomputes its base from the current length, so it has no fixed per-pair divisors to compose",
    POSITION_MAP: "remaps positions inside attention instead of dividing frequencies: there is nothing to compose",
}


def check_options(o) -> None:
    """The refusals that need no model: checked before the source is resolved (a Hub id is not downloaded)."""
    if o.replace_scaling:
        raise SpecError("--stack and --replace-scaling contradict each other: --stack keeps the source's rope "
                        "scaling and composes the new method on top, --replace-scaling discards it", "pass one of them")
    if o.method == "auto":
        raise UnsupportedError("--method auto does not stack: its candidates are measured on the base rope, not on "
                               "the source's scaling", "pass --stack with --method METHOD (e.g. yarn)")


def prepare(source, o) -> tuple[RopeSpec, BaseRope]:
    """(the rope the source runs now, the base the new method is built on: E's θ, original length = E's target)."""
    new_kind = METHODS.get(o.method).kind  # an unknown name: "did you mean"
    existing = existing_spec(source, o.method, o.original_context)
    check_pair(existing, o.method, new_kind)
    from ropeconvert.convert.auto_plan import searched

    if searched(o.method, dict(o.knobs or {})):  # the catalog and the default search start from the base rope
        raise UnsupportedError(f"--stack {o.method} needs --factors: the factor catalog and the default search "
                               "measure the base rope, not the stacked one", "pass --factors FILE")
    return existing, replace(existing.base, rope_theta=existing.rope_theta, original_context=existing.target_context)


def existing_spec(source, new_method: str, original_context: int | None = None) -> RopeSpec:
    """The source's existing scaling as a spec (HF: its config; GGUF: the spec a ropeconvert export keeps)."""
    if source.kind == "gguf":
        from ropeconvert.formats.gguf_rope import spec_from_gguf

        spec = spec_from_gguf(source.reader)
        if spec is None and source.existing_scaling:
            raise UnsupportedError(f"--stack cannot read {source.existing_scaling} of {source.name} back into exact "
                                   "divisors: the GGUF was not written by ropeconvert",
                                   "stack from the model's HF checkpoint, or pass --replace-scaling")
        if spec is not None and original_context not in (None, spec.original_context):
            raise SpecError(f"--original-context {original_context}: {source.name} records its original context "
                            f"{spec.original_context}", "drop --original-context")
        longest = 0
    else:
        from ropeconvert.formats.dpe_format import CONFIG_KEY
        from ropeconvert.formats.hf_config import spec_from_hf_config

        config = source.config()
        if isinstance(config.get(CONFIG_KEY), dict):  # a DPE / Self-Extend export keeps its native rope beside it
            raise UnsupportedError(f"--stack cannot put {new_method} on top of the source's "
                                   f"{config[CONFIG_KEY].get('method')} position map: {_NO_DIVISORS[POSITION_MAP]}",
                                   "extend the model it was made from instead")
        spec = spec_from_hf_config(config, original_context)
        # Llama-3.1 declares 131072 = 16 × 8192 tokens with llama3 factor 8: the model runs to max_position_embeddings
        # even where the scaling's factor implies less, so the longer of the two is the length it was extended to
        longest = int(config.get("max_position_embeddings") or 0)
    if spec is None:
        raise UnsupportedError(f"{source.name} carries no rope scaling: nothing to stack on",
                               "drop --stack (a plain model is extended directly)")
    return replace(spec, target_context=longest) if longest > spec.target_context else spec


def check_pair(existing: RopeSpec, new_method: str, new_kind: str) -> None:
    """Refuse a pair with no fixed divisors on either side, naming both."""
    for side, kind, fix in ((new_method, new_kind, "stack a static method (linear, ntk, yarn, llama3, longrope)"),
                            (existing.method, existing.kind, "pass --replace-scaling instead of --stack to drop it")):
        if kind in _NO_DIVISORS:
            raise UnsupportedError(f"--stack cannot put {new_method} on top of the source's {named(existing)} "
                                   f"scaling: {side} {_NO_DIVISORS[kind]}", fix)


def compose(existing: RopeSpec, new: RopeSpec) -> RopeSpec:
    """The stacked spec: divisors E_i·N_i of the original θ_i, attention factor E_a·N_a, the source's own base."""
    check_pair(existing, new.method, new.kind)
    _check_sets(existing, new)
    # both as divisors of the base each was built on (freq_factors also folds a changed θ, e.g. ntk, into them):
    # E against the original θ_i, N against E's θ, so θ_i/(E_i·N_i) = (what the model runs now)/N_i
    e_long = existing.freq_factors(existing.target_context)  # past the original length (the long set)
    n = new.freq_factors(new.target_context)
    # LongRoPE keeps its short set within the original length: that is the rope the model was tuned to run there,
    # and the new method extends the long side (as LongRoPE's own second stage does); other kinds have one set, as
    # has the generic per-pair form (longrope with short = long, what a stacked HF export reads back as)
    short = tuple(existing.freq_factors(existing.original_context)) if _own_short(existing) else None
    stacked_on = {"method": existing.method, "params": dict(existing.params),
                  "original_context": existing.original_context, "target_context": new.base.original_context}
    return RopeSpec(
        method=new.method, base=existing.base, target_context=new.target_context,
        rope_theta=existing.base.rope_theta, factors=tuple(np.asarray(e_long) * n), short_factors=short,
        # both factors multiply cos and sin: the source already runs with E_a in its rotary embedding, and N_a is
        # the new method's own temperature for the model it is applied to, so the stacked rope carries both
        attention_factor=existing.attention_factor * new.attention_factor,
        params={**new.params, "stacked_on": stacked_on}, kind=LONGROPE if short is not None else PER_PAIR,
    )


def describe(spec: RopeSpec) -> str:
    """The CLI's note on a stacked spec: what was stacked on what, and over which lengths."""
    on = spec.params["stacked_on"]
    return (f"{spec.method} stacked on the source's {named(on)} scaling: {on['original_context']} → "
            f"{on['target_context']} → {spec.target_context} tokens, per-pair divisors multiplied, attention factor "
            f"{spec.attention_factor:.6g}")


def named(spec) -> str:
    """A rope by its methods, newest first ("yarn on llama3"): a source that was itself stacked says so."""
    method, params = (spec.method, spec.params) if isinstance(spec, RopeSpec) else (spec["method"], spec["params"])
    on = params.get("stacked_on")
    return method if not isinstance(on, dict) else f"{method} on {named(on)}"


def _check_sets(existing: RopeSpec, new: RopeSpec) -> None:
    """A stacked rope has at most two sets, switched at the source's original length: the new method's own short
    set would switch at the existing target instead, and a second longrope would meet the first one's short set."""
    what = f"--stack cannot put {new.method} on top of the source's {named(existing)} scaling"
    if _own_short(new):
        raise UnsupportedError(f"{what}: its short factors would apply up to {new.base.original_context} tokens, but "
                               f"a stacked rope switches sets only at the original {existing.original_context}",
                               "give --short-factors the same file as --factors (one set at every length)")
    info = METHODS.get(new.method) if new.method in METHODS else None
    if _own_short(existing) and info is not None and info.kind == LONGROPE:
        raise UnsupportedError(f"{what}: stacking one long/short factor set on another is not supported",
                               "compose the factors yourself and pass --replace-scaling --method longrope "
                               "--factors FILE --short-factors FILE")


def _own_short(spec: RopeSpec) -> bool:
    """A short set of its own, not the generic per-pair form's copy of the long one."""
    return spec.short_factors is not None and spec.short_factors != spec.factors
