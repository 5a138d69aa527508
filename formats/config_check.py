"""THE one validating layer for HF configs: every field ropeconvert reads, checked once for type, range, finiteness and
nesting depth, with messages that name the field, show its bad value (a short repr, never the file) and the fix.

`check_config` runs on every config read from disk (formats/source.read_config), on configs built from GGUF metadata
and on Phi-3 style factor files; it checks the fields that are present (null counts as absent, as transformers reads
it). What a task needs to be present is asked separately with `require` (the base rope needs the head counts; a GGUF
export also needs the layer count, vocabulary and feed-forward sizes). Readers downstream may then trust the types.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.safe_io import check_depth

MAX_CONTEXT = 2**31 - 1  # llama.cpp and vLLM hold lengths in 32-bit integers
MAX_FACTORS = 1 << 16  # one factor per frequency pair: head_dim/2 entries
FIX = "correct {} (as the model's published config.json has it) or re-download the model"

# positive integer fields → the largest value a real model has room for
INT_FIELDS: dict[str, int] = {
    "hidden_size": 1 << 20, "intermediate_size": 1 << 22, "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14, "head_dim": 1 << 14, "num_hidden_layers": 1 << 14, "vocab_size": 1 << 26,
    "max_position_embeddings": MAX_CONTEXT, "original_max_position_embeddings": MAX_CONTEXT,
    "sliding_window": MAX_CONTEXT,
}
# rope dict (rope_scaling / rope_parameters) numbers → smallest allowed value and whether it may equal it
ROPE_NUMBERS: dict[str, tuple[float, bool]] = {
    "factor": (0.0, False), "beta_fast": (0.0, False), "beta_slow": (0.0, False), "attention_factor": (0.0, False),
    "mscale": (0.0, True), "mscale_all_dim": (0.0, True), "low_freq_factor": (0.0, False),
    "high_freq_factor": (0.0, False),
}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' layer_types values with a rope of their own
GGUF_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")


def show(value: Any, limit: int = 40) -> str:
    """A value as it may appear in a message: its repr (so a newline shows as \\n), cut short."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def bad(where: str, field: str, rule: str, value: Any, fix: str | None = None) -> InputError:
    return InputError(f"{where}: {field} must be {rule}, got {show(value)}", fix or FIX.format(field))


def positive_int(where: str, field: str, value: Any, most: int, fix: str | None = None) -> int:
    """`value` as a positive int no larger than `most`; a bool, float (1e30) or string is refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(where, field, "a positive integer", value, fix)
    if not 0 < value <= most:
        raise bad(where, field, f"a positive integer of at most {most}", value, fix)
    return value


def number(where: str, field: str, value: Any, low: float = 0.0, inclusive: bool = False,
           fix: str | None = None) -> float:
    """A finite int or float above `low` (or equal to it, with `inclusive`); NaN, ±inf, bools and strings fail."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < low or (value == low and not inclusive):
        raise bad(where, field, f"a finite number {'≥' if inclusive else '>'} {low:g}", value, fix)
    return float(value)


def check_config(config: Any, where: str = "config.json") -> dict[str, Any]:
    """Validate the fields ropeconvert reads; returns `config` itself. Raises InputError on the first bad one."""
    if not isinstance(config, dict):
        raise InputError(f"{where} must hold a JSON object, got {type(config).__name__}", FIX.format("it"))
    check_depth(config, where, FIX.format("it"))
    get = lambda key: config.get(key)  # noqa: E731 - null and absent mean the same to transformers
    for key, most in INT_FIELDS.items():
        if get(key) is not None:
            positive_int(where, key, get(key), most)
    if get("rope_theta") is not None:
        number(where, "rope_theta", get("rope_theta"), low=1.0)
    if get("partial_rotary_factor") is not None:
        _partial(where, "partial_rotary_factor", get("partial_rotary_factor"))
    if get("rms_norm_eps") is not None:
        number(where, "rms_norm_eps", get("rms_norm_eps"))
    if get("tie_word_embeddings") is not None and not isinstance(get("tie_word_embeddings"), bool):
        raise bad(where, "tie_word_embeddings", "true or false", get("tie_word_embeddings"))
    if get("model_type") is not None and not isinstance(get("model_type"), str):
        raise bad(where, "model_type", "a string such as 'llama'", get("model_type"))
    _check_heads(config, where)
    for key in ("rope_scaling", "rope_parameters"):
        if get(key) is not None:
            _check_layer_ropes(config, get(key), where, key)
    return config


def global_rope(config: dict[str, Any]) -> dict[str, Any] | None:
    """The rope dict of the global (full-attention) layers, the one ropeconvert reads and extends: a v4
    `rope_scaling` wins over v5 `rope_parameters` (as transformers 5 does), and a per-layer-type
    `rope_parameters` (Gemma 3 in transformers 5) gives its `full_attention` entry."""
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if isinstance(rope, dict) and set(rope) & set(LAYER_TYPES) and all(isinstance(v, dict) for v in rope.values()):
        return rope.get("full_attention")
    return rope


def _check_layer_ropes(config: dict[str, Any], rope: Any, where: str, key: str) -> None:
    """A rope dict, or (archs whose sliding layers keep their own rope) one per layer type."""
    if not (isinstance(rope, dict) and any(isinstance(v, dict) for v in rope.values())):
        return _check_rope(rope, where, key)
    from ropeconvert.formats.archs import MODEL_TYPES

    arch = MODEL_TYPES.get(config.get("model_type"))  # type: ignore[arg-type]
    if arch is None or not arch.local_rope or not set(rope) <= set(LAYER_TYPES):
        raise UnsupportedError(f"{where} has per-layer-type rope parameters {show(sorted(rope))}",
                               "only one global rope is supported (per layer type: Gemma 3's "
                               f"{', '.join(LAYER_TYPES)})")
    for layer_type, inner in rope.items():
        _check_rope(inner, where, f"{key}.{layer_type}")


def require(config: dict[str, Any], fields: Iterable[str], where: str = "config.json", purpose: str = "") -> None:
    """Refuse a config that lacks a field a task needs (types were checked by check_config)."""
    for key in fields:
        if config.get(key) is None:
            need = f", which {purpose} needs" if purpose else ""
            raise InputError(f"{where} lacks {key!r}{need}", "give a complete HF config.json (as saved by transformers)")


def _partial(where: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise bad(where, field, "a number in (0, 1]", value)
    return float(value)


def _check_heads(config: dict[str, Any], where: str) -> None:
    """The head geometry every writer and the rope rely on: whole heads, whole GQA groups, an even rotary dim."""
    hidden, heads, kv = config.get("hidden_size"), config.get("num_attention_heads"), config.get("num_key_value_heads")
    head_dim = config.get("head_dim")
    if kv is not None and heads is not None and heads % kv:
        raise InputError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}",
                         "each key/value head serves a whole group of query heads; fix the head counts in config.json")
    if head_dim is None and hidden is not None and heads is not None:
        if hidden % heads:
            raise InputError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                             "set head_dim in config.json, or fix the head count")
        head_dim = hidden // heads
    if head_dim is None:
        return
    rope = global_rope(config)
    partial = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    partial = partial if partial is not None else config.get("partial_rotary_factor")
    partial = _partial(where, "partial_rotary_factor", partial) if partial is not None else 1.0
    rotary = int(head_dim * partial)  # transformers truncates the same way
    if rotary % 2 or rotary < 2:
        raise InputError(f"{where}: head_dim {head_dim} × partial_rotary_factor {partial:g} gives {rotary} rotary "
                         "dimensions, not an even number ≥ 2", "fix head_dim or partial_rotary_factor in config.json")


def _check_rope(rope: Any, where: str, key: str) -> None:
    if not isinstance(rope, dict):
        raise InputError(f"{where}: {key} must be an object, got {type(rope).__name__} {show(rope)}", FIX.format(key))
    if any(isinstance(v, dict) for v in rope.values()):  # transformers 5 per-layer-type dicts
        raise UnsupportedError(f"{where} has per-layer-type rope parameters", "only one global rope is supported")
    field = lambda name: f"{key}.{name}"  # noqa: E731
    for name in ("rope_type", "type"):  # a name, so that no message can show it differently ("yarn\n")
        if rope.get(name) is not None and not (isinstance(rope[name], str) and _NAME.fullmatch(rope[name])):
            raise bad(where, field(name), "a rope type name such as 'yarn'", rope[name])
    for name, (low, inclusive) in ROPE_NUMBERS.items():
        if rope.get(name) is not None:
            number(where, field(name), rope[name], low, inclusive)
    if rope.get("rope_theta") is not None:
        number(where, field("rope_theta"), rope["rope_theta"], low=1.0)
    if rope.get("partial_rotary_factor") is not None:
        _partial(where, field("partial_rotary_factor"), rope["partial_rotary_factor"])
    if rope.get("original_max_position_embeddings") is not None:
        positive_int(where, field("original_max_position_embeddings"), rope["original_max_position_embeddings"],
                     MAX_CONTEXT)
    for name in ("long_factor", "short_factor"):
        values = rope.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or not 0 < len(values) <= MAX_FACTORS:
            raise bad(where, field(name), f"a list of 1 to {MAX_FACTORS} numbers", values)
        for i, v in enumerate(values):
            number(where, f"{field(name)}[{i}]", v)
