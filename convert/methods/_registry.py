"""The method registry: one decorated pure function per method, registered at import time.

A method declares, next to its function, the KIND of rope it produces (convert/spec.py KINDS: the writers switch on
it) and, where transformers has one, its native HF `rope_type` (`HfRope`: how its spec is written as a rope dict
and read back as knobs, the way transformers keys ROPE_INIT_FUNCTIONS by rope_type). A method without one is
exported in its kind's generic form (formats/hf_config.py, formats/gguf_rope.py). Its knobs are the keyword-only
parameters of its function, typed by their annotations (`Knob`): the CLI builds its flags from them.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ropeconvert.convert.spec import KINDS, BaseRope, RopeSpec
from ropeconvert.errors import SpecError
from ropeconvert.registry import Registry

# prose for `ropeconvert methods`: how each kind travels when the method has no note of its own
KIND_TEXT = {
    "theta": ("new rope_theta, no rope_scaling", "rope.freq_base"),
    "linear": ("rope_type linear", "rope.scaling.type=linear + factor"),
    "dynamic": ("rope_type dynamic; max_position_embeddings stays original",
                "no runtime support: refused unless --static bakes NTK at the target length"),
    "yarn": ("rope_type yarn", "rope.scaling.type=yarn (+ attn_factor); non-default betas baked as rope_freqs"),
    "longrope": ("rope_type longrope + long/short factors",
                 "rope_factors_long/short + attn_factor (rope_freqs where the arch has no long/short)"),
    "llama3": ("rope_type llama3", "rope_freqs tensor"),
    "per_pair": ("rope_type longrope with long = short factors", "rope_freqs tensor (equal long/short on phi3)"),
    "position_map": ("native rope + config `dpe` block; attn_implementation='ropeconvert_dpe'",
                     "ropeconvert.dpe.* metadata + a labelled rope_freqs approximation"),
}
_CLI_TYPES = (bool, int, float, Path, str)  # a knob's flag type: the first of these its annotation allows


@dataclass(frozen=True)
class HfRope:
    """A method's native HF rope dict: `write(spec)` gives its own keys (the portable envelope — rope_type, type,
    rope_theta, max_position_embeddings — is added by formats/hf_config.py); `read(rope, config, base)` gives the
    knobs that rebuild the spec from a config's rope dict (KeyError for a missing key)."""

    rope_type: str
    write: Callable[[RopeSpec], dict[str, Any]]
    read: Callable[[dict[str, Any], dict[str, Any], BaseRope], dict[str, Any]]
    aliases: tuple[str, ...] = ()  # other rope_type names read as this one (Phi-3's "su")

    def __str__(self) -> str:  # `ropeconvert methods` prints it
        return f"rope_type {self.rope_type}"


@dataclass(frozen=True)
class Knob:
    """One keyword-only parameter of a method function."""

    name: str
    annotation: str  # as written, e.g. "float | None"
    types: tuple[type, ...]  # what the annotation allows, None excluded
    default: Any

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def cli_type(self) -> type | None:
        """The flag's value type, or None for a knob only code passes (DPE's measured selection)."""
        return next((t for t in _CLI_TYPES if t in self.types), None)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., RopeSpec]
    paper: str
    summary: str
    kind: str
    hf: HfRope | None = None  # None: the kind's generic HF form
    note: tuple[str, str] | None = None  # (HF, GGUF) prose for `ropeconvert methods`, else the kind's

    @property
    def params(self) -> list[str]:
        return [k.name for k in self.knobs]

    @property
    def knobs(self) -> tuple[Knob, ...]:
        fn = inspect.unwrap(self.fn)
        out = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                allowed = _types(_evaluate(p.annotation, fn.__globals__))
                out.append(Knob(p.name, str(p.annotation), allowed, None if p.default is p.empty else p.default))
        return tuple(out)

    @property
    def hf_text(self) -> str:
        return (self.note or KIND_TEXT[self.kind])[0]

    @property
    def gguf_text(self) -> str:
        return (self.note or KIND_TEXT[self.kind])[1]


METHODS: Registry[MethodInfo] = Registry("method")


def rope_method(name: str, *, paper: str, summary: str, kind: str, hf: HfRope | None = None,
                note: tuple[str, str] | None = None):
    """Register `fn(base: BaseRope, *, knobs…) -> RopeSpec` under `name`; the specs it returns carry `kind`."""
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")

    def wrap(fn: Callable[..., RopeSpec]) -> Callable[..., RopeSpec]:
        @functools.wraps(fn)
        def method(base: BaseRope, **knobs: Any) -> RopeSpec:
            spec = fn(base, **knobs)
            return spec if spec.kind == kind else dataclasses.replace(spec, kind=kind)

        METHODS.register(name, MethodInfo(name, method, paper, summary, kind, hf, note))
        return method

    return wrap


def build_spec(method: str, base: BaseRope, **knobs: Any) -> RopeSpec:
    """Call a method with the knobs the user set (None = not set); refuse knobs the method does not take."""
    info = METHODS.get(method)
    given = {k: v for k, v in knobs.items() if v is not None}
    unknown = sorted(set(given) - set(info.params))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        takes = ", ".join("--" + p.replace("_", "-") for p in info.params)
        raise SpecError(f"{flags} does not apply to method {method!r}", f"{method} takes: {takes}")
    return info.fn(base, **given)


def need(rope: dict[str, Any], key: str) -> float:
    """A number an HF rope dict must hold (config_check validated its type and range): absent is a missing key."""
    if rope.get(key) is None:
        raise KeyError(key)
    return float(rope[key])


def _evaluate(annotation: Any, namespace: dict[str, Any]) -> Any:
    """One parameter's annotation (a string under `from __future__ import annotations`), evaluated in its module;
    a name only the defining scope knows (a function defined inside a test) leaves the knob untyped."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {"Path": Path, **vars(typing), **namespace})  # noqa: S307  (source annotations)
    except NameError:
        return Any


def _types(hint: Any) -> tuple[type, ...]:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args if a is not type(None))
