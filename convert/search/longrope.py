"""LongRoPE's search space and initial population (arXiv 2402.13753 §3.2, Table 4; reference/methods.md §2.2).

Long factors: λ_i ∈ [1.0, 1.25·s] on the 0.01 grid, non-decreasing — the paper's range (the released code's
`dim_mono.py` uses [1.0, 1 + s] instead; `max_factor` picks another bound). The initial population is PI, NTK and
YaRN, each written as per-pair divisors of θ_i **in frequency space**, plus mutations of them:
- PI: λ_i = s;
- NTK-aware: θ' = θ·s^(d/(d−2)) ⇔ λ_i = s^(2i/(d−2)) (1 for the first pair, s for the last);
- YaRN: λ_i = 1/((1−m_i)/s + m_i) with YaRN's ramp m_i (`yarn_factors`) — *not* the reference `search.py`'s
  factor-space blend s·(1−m_i) + m_i, which is far larger inside the ramp (pitfall 3).
Every candidate runs with the "su" attention factor √(1 + ln s / ln L) that the export carries.

Short factors (`--short`): the same search at the original length L with a reduced maximum, so the export keeps its
short-context quality. transformers applies the attention factor at *every* length (pitfall 1), so within L the
model sees its trained rope with sharper attention; the short factors are searched against exactly that. The paper
gives no value for the reduced maximum; the default ∛s matches the released short factors (LLaMA2 4k→128k, s = 32:
short factors end at 2.79; Phi-3-128k: 3.05; ∛32 = 3.17).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.methods.yarn import yarn_factors
from ropeconvert.convert.search.evolution import GRID, Genes, Space
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import SpecError

PAPER_MAX = 1.25  # λ ≤ 1.25·s (Table 4)


@dataclass
class Phase:
    """One search: what is searched, how a candidate becomes a spec, and what it is compared with."""

    name: str  # "long" or "short"
    space: Space
    seeds: list[tuple[str, Genes]]
    expand: Callable[[Genes], list[float]]  # genes → the full factor vector
    spec_for: Callable[[Genes], RopeSpec]  # the spec a candidate is evaluated (and exported) with
    references: dict[str, RopeSpec | None]  # evaluated once each, drawn as lines in search.png
    length: int  # tokens per fitness sample
    fitness: str  # "ppl" or "needle_ppl"
    info: dict = field(default_factory=dict)


def pi_factors(base: BaseRope, s: float) -> np.ndarray:
    return np.full(base.n_pairs, float(s))


def ntk_factors(base: BaseRope, s: float) -> np.ndarray:
    """Static NTK as divisors: (θ·s^(d/(d−2)))^(−2i/d) = θ_i / s^(2i/(d−2))."""
    d = base.rotary_dim
    return float(s) ** (2.0 * np.arange(base.n_pairs) / (d - 2))


def seed_factors(base: BaseRope, s: float) -> list[tuple[str, np.ndarray]]:
    return [("pi", pi_factors(base, s)), ("ntk", ntk_factors(base, s)), ("yarn", yarn_factors(base, s))]


def grid_bound(value: float, up: bool) -> int:
    """value in hundredths, rounded into the range (a tiny epsilon absorbs 1.25·1.6 = 1.9999999…)."""
    scaled = value * GRID
    return int(math.ceil(scaled - 1e-9)) if up else int(math.floor(scaled + 1e-9))


def _plain(genes: Genes) -> list[float]:
    return [round(g / GRID, 2) for g in genes]


def long_phase(base: BaseRope, target: int, max_factor: float | None = None) -> Phase:
    s = target / base.original_context
    top = PAPER_MAX * s if max_factor is None else max_factor
    if top < s:
        raise SpecError(f"--max-factor {top:g} is below the scale s = {s:g}",
                        f"use at least {s:g} (the paper uses 1.25·s = {PAPER_MAX * s:g}; the released code 1+s)")
    space = Space(base.n_pairs, GRID, grid_bound(top, up=False))
    seeds = [(name, space.snap(f)) for name, f in seed_factors(base, s)]
    refs = {"PI": build_spec("linear", base, target_context=target), "NTK": build_spec("ntk", base, target_context=target),
            "YaRN": build_spec("yarn", base, target_context=target)}
    return Phase("long", space, seeds, _plain,
                 lambda g: build_spec("longrope", base, factors=_plain(g), target_context=target),
                 refs, target, "ppl", {"max_factor": space.hi / GRID, "scale": s})


def default_short_max(s: float) -> float:
    return s ** (1 / 3)


def short_phase(base: BaseRope, target: int, long_factors: list[float], short_max: float | None = None) -> Phase:
    s = target / base.original_context
    top = default_short_max(s) if short_max is None else short_max
    hi = grid_bound(top, up=False)
    if hi <= GRID:
        raise SpecError(f"--short-max {top:g} leaves no room above 1.0 on the 0.01 grid", "use a value ≥ 1.01")
    space = Space(base.n_pairs, GRID, hi)
    seeds = [("identity", (GRID,) * base.n_pairs)]  # the export without short factors: never lose to it
    seeds += [(name, space.snap(f)) for name, f in seed_factors(base, hi / GRID)]

    def spec_for(genes: Genes) -> RopeSpec:
        return build_spec("longrope", base, factors=list(long_factors), short_factors=_plain(genes),
                          target_context=target)

    return Phase("short", space, seeds, _plain, spec_for, {"original rope": None}, base.original_context, "ppl",
                 {"max_factor": hi / GRID, "scale": s})
