"""The canonical RoPE description every method produces and every writer and validator consumes.

Notation (reference/methods.md §0): head rotary dim d, d/2 frequency pairs, θ_i = b^(-2i/d). Almost every method is a
per-pair divisor f_i of θ_i (θ'_i = θ_i / f_i) plus one scalar `attention_factor` that multiplies both cos and sin,
so attention logits scale by its square. Dynamic NTK is the exception: its base depends on the current length.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from ropeconvert.errors import SpecError

# The kinds of rope a method can produce (DESIGN.md "Method kinds"). A method declares its kind next to its function
# (convert/methods/_registry.py); every writer switches on `spec.kind`, never on the method's name.
THETA = "theta"  # plain rope with a new base (static NTK)
LINEAR = "linear"  # every pair divided by s (Position Interpolation)
DYNAMIC = "dynamic"  # base recomputed from the current length
YARN = "yarn"  # NTK-by-parts ramp + attention temperature
LONGROPE = "longrope"  # long/short per-pair factor sets
LLAMA3 = "llama3"  # Llama-3.1 wavelength bands
PER_PAIR = "per_pair"  # arbitrary per-pair divisors, the same at every length
POSITION_MAP = "position_map"  # DPE / Self-Extend: positions remapped inside attention
KINDS = (THETA, LINEAR, DYNAMIC, YARN, LONGROPE, LLAMA3, PER_PAIR, POSITION_MAP)
# Specs written before specs carried their kind (ropeconvert.json, the GGUF `ropeconvert.spec` key) name only their
# method: these are the built-in methods' kinds then. Any other spec without a kind is classified by its fields.
_KIND_BEFORE_KINDS = {"ntk": THETA, "linear": LINEAR, "dynamic": DYNAMIC, "yarn": YARN, "longrope": LONGROPE,
                      "llama3": LLAMA3, "dpe": POSITION_MAP, "selfextend": POSITION_MAP}


@dataclass(frozen=True)
class BaseRope:
    """The rope a source model was trained with, as read from its config or GGUF metadata."""

    head_dim: int
    rotary_dim: int
    rope_theta: float
    original_context: int
    arch: str = "llama"

    def __post_init__(self):
        _check_int("head_dim", self.head_dim, low=2)
        _check_int("rotary_dim", self.rotary_dim, low=2)
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise SpecError(f"rotary_dim={self.rotary_dim} must be even and at most head_dim={self.head_dim}")
        _check_positive("rope_theta", self.rope_theta, above=1.0)
        _check_int("original_context", self.original_context, low=2)

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    def inv_freq(self, theta: float | None = None) -> np.ndarray:
        """θ_i = b^(-2i/d) in float64, i = 0..d/2-1."""
        b = self.rope_theta if theta is None else theta
        return 1.0 / (b ** (np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim))


@dataclass(frozen=True)
class RopeSpec:
    """One frozen, self-validating description of an extended rope (see DESIGN.md "The canonical spec")."""

    method: str
    base: BaseRope
    target_context: int
    rope_theta: float  # base after the method (static NTK changes it)
    factors: tuple[float, ...] | None = None  # divisors of θ_i past original_context (or at all lengths if no short)
    short_factors: tuple[float, ...] | None = None  # divisors within original_context (LongRoPE)
    attention_factor: float = 1.0  # multiplies cos and sin
    dynamic_factor: float | None = None  # dynamic NTK α: base recomputed per length past original_context
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the user's knobs, verbatim
    position_map: Any = None  # DPE / Self-Extend map (validators/dpe), None for frequency-only methods
    require_monotone: bool = False
    kind: str = ""  # one of KINDS (the method's declared kind); "" = worked out (older files, hand-built specs)

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "kind", self.kind or _KIND_BEFORE_KINDS.get(self.method) or self._kind_of_fields())
        _check_int("target_context", self.target_context, low=2)
        if self.target_context <= self.base.original_context:
            raise SpecError(
                f"target context {self.target_context} must be larger than the original context "
                f"{self.base.original_context}",
                "raise --target-context / --factor, or set --original-context to the length the model was trained at",
            )
        _check_positive("rope_theta", self.rope_theta, above=1.0)
        _check_positive("attention_factor", self.attention_factor)
        if self.dynamic_factor is not None:
            _check_positive("dynamic factor", self.dynamic_factor, above=1.0)
        for name in ("factors", "short_factors"):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(float(v) for v in values)
            object.__setattr__(self, name, values)
            _check_factor_array(name, values, self.base.n_pairs, self.require_monotone)
        self._check_kind()

    def _kind_of_fields(self) -> str:
        if self.position_map is not None:
            return POSITION_MAP
        if self.dynamic_factor is not None:
            return DYNAMIC
        if self.factors is None:
            return THETA
        return PER_PAIR if self.short_factors is None else LONGROPE

    def _check_kind(self) -> None:
        """A kind promises the fields its writers read: refuse a spec whose fields cannot be written as its kind."""
        k = self.kind
        if k not in KINDS:
            raise SpecError(f"rope kind {k!r} is not one of {', '.join(KINDS)}")
        wants = {"position_map": k == POSITION_MAP, "dynamic_factor": k == DYNAMIC,
                 "factors": k not in (THETA, DYNAMIC, POSITION_MAP)}
        for name, needed in wants.items():
            if (getattr(self, name) is not None) != needed:
                raise SpecError(f"a {k} rope {'needs' if needed else 'has no'} {name} (method {self.method!r})")
        if k == LINEAR and len(set(self.factors)) != 1:
            raise SpecError(f"a linear rope divides every pair by the same factor (method {self.method!r})",
                            "declare the method's kind as per_pair")

    # ---- derived quantities -------------------------------------------------------------------------------------
    @property
    def original_context(self) -> int:
        return self.base.original_context

    @property
    def scale(self) -> float:
        return self.target_context / self.base.original_context

    def factors_at(self, seq_len: int | None = None) -> np.ndarray | None:
        """The divisors in force at `seq_len` (None = the short/initial set, as transformers does)."""
        use_short = self.short_factors is not None and (seq_len is None or seq_len <= self.original_context)
        chosen = self.short_factors if use_short else self.factors
        return None if chosen is None else np.asarray(chosen, dtype=np.float64)

    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """Frequencies actually used at `seq_len` tokens, float64, length rotary_dim/2."""
        if self.dynamic_factor is not None:
            # Dynamic NTK (transformers `_compute_dynamic_ntk_parameters`): the base grows with the current length.
            length = max(seq_len or 0, self.original_context)
            a, d = self.dynamic_factor, self.base.rotary_dim
            theta = self.rope_theta * ((a * length / self.original_context) - (a - 1)) ** (d / (d - 2))
            return self.base.inv_freq(theta)
        inv = self.base.inv_freq(self.rope_theta)
        f = self.factors_at(seq_len)
        return inv if f is None else inv / f

    def freq_factors(self, seq_len: int | None = None) -> np.ndarray:
        """The same frequencies as divisors of the *original* θ_i — what GGUF `rope_freqs` holds."""
        return self.base.inv_freq() / self.inv_freq(seq_len)

    # ---- serialisation (ropeconvert.json, search outputs) -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["base"] = asdict(self.base)
        out["params"] = dict(self.params)
        for key in ("factors", "short_factors"):
            out[key] = None if out[key] is None else list(out[key])
        out["position_map"] = None if self.position_map is None else self.position_map.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RopeSpec":
        data = dict(data)
        data["base"] = BaseRope(**data["base"])
        for key in ("factors", "short_factors"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if data.get("position_map") is not None:
            from ropeconvert.convert.position_map import PositionMap  # only DPE specs carry one

            data["position_map"] = PositionMap.from_dict(data["position_map"])
        return cls(**data)


def resolve_target(base: BaseRope, factor: float | None, target_context: int | None) -> tuple[float, int]:
    """Turn `--factor S` or `--target-context N` into (S, N); both given must agree."""
    if factor is None and target_context is None:
        raise SpecError("no extension given", "pass --factor S or --target-context N")
    if factor is not None:
        _check_positive("factor", factor, above=1.0)
    if target_context is not None:
        _check_int("target_context", target_context, low=2)
        if target_context <= base.original_context:
            raise SpecError(
                f"target context {target_context} must be larger than the original context {base.original_context}",
                "raise --target-context, or set --original-context to the length the model was trained at",
            )
    if factor is None:
        return target_context / base.original_context, int(target_context)
    implied = int(round(base.original_context * factor))
    if target_context is not None and target_context != implied:
        raise SpecError(
            f"--factor {factor:g} and --target-context {target_context} disagree "
            f"({base.original_context} × {factor:g} = {implied})",
            "pass only one of them",
        )
    return float(factor), implied


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SpecError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _check_positive(name: str, value: Any, above: float = 0.0) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= above:
        raise SpecError(f"{name} must be a finite number > {above:g}, got {value!r}")


def _check_factor_array(name: str, values: tuple[float, ...], n_pairs: int, monotone: bool) -> None:
    if len(values) != n_pairs:
        raise SpecError(
            f"{name} has {len(values)} values but the model has {n_pairs} frequency pairs (rotary_dim/2)",
            f"give exactly {n_pairs} factors, one per pair",
        )
    arr = np.asarray(values)
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
    if bad.size:
        i = int(bad[0])
        raise SpecError(f"{name}[{i}] = {values[i]!r}: every factor must be a finite number > 0")
    if monotone:
        drops = np.flatnonzero(np.diff(arr) < 0)
        if drops.size:
            i = int(drops[0])
            raise SpecError(
                f"{name} must be non-decreasing but {name}[{i + 1}] = {values[i + 1]:g} < {name}[{i}] = {values[i]:g}",
                "fix the factor file, or pass --allow-non-monotone to accept it as is",
            )
