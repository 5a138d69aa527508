"""The method registry: one decorated pure function per method, registered at import time."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import SpecError
from ropeconvert.registry import Registry


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., RopeSpec]
    paper: str
    summary: str
    hf: str  # how the HF export carries it
    gguf: str  # how the GGUF export carries it

    @property
    def params(self) -> list[str]:
        return [p for p in inspect.signature(self.fn).parameters if p != "base"]


METHODS: Registry[MethodInfo] = Registry("method")


def rope_method(name: str, *, paper: str, summary: str, hf: str, gguf: str):
    """Register `fn(base: BaseRope, **knobs) -> RopeSpec` under `name`."""

    def wrap(fn: Callable[..., RopeSpec]) -> Callable[..., RopeSpec]:
        METHODS.register(name, MethodInfo(name, fn, paper, summary, hf, gguf))
        return fn

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
