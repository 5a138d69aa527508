"""LongRoPE2's search space (arXiv 2502.20082 §3, App. B; reference `evolution/algorithms/dim_mono.py` and
`search.py` @5e669a53; reference/methods.md §2.5).

Pairs from the critical dimension cd up are searched in [s, 2s] (0.01 grid, non-decreasing): their periods exceed
the trained length, so they must be interpolated at least by s (the paper's OOD bound λ_i ≥ L/L_train), and the
paper's hypothesis is that they are under-trained, so factors above s help. Pairs below cd follow NTK scaling matched
at cd: λ_i = λ_cd^(i/cd) (the reference's `ntk_left`), so λ_0 = 1 and the vector is continuous and monotone at cd.

The critical dimension defaults to the reference code's ⌈(d/2)·log_θ(L/2π)⌉ − 1: (d/2)·log_θ(L/2π) is the
(fractional) pair whose period 2π·θ^(2i/d) equals the trained length L, so cd is the last pair (0-based) that still
completes a rotation within L — the paper's "31st" (Phi-3-mini) and "35th" (LLaMA3-8B) dimension counted from 1;
19 for SmolLM2-135M (θ = 1e5, d = 64, L = 8192). The paper's *real* critical dims are lower (25 and 30): pass
--critical-dim.

Fitness is the needle-driven perplexity (convert/search/needle.py). Initial population: the paper draws a constant
level in [s, 2s] for the searched part; here five evenly spaced levels s … 2s are the seeds, then mutants.
"""
from __future__ import annotations

import math

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.search.evolution import GRID, Genes, Space
from ropeconvert.convert.search.longrope import Phase, grid_bound
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import SpecError

LEVELS = (1.0, 1.5, 2.0, 1.25, 1.75)  # seed levels as multiples of s, most distinct first


def critical_dim(base: BaseRope) -> int:
    """⌈(d/2)·log_θ(L/2π)⌉ − 1, clamped to the pairs that exist (reference search.py default)."""
    d, theta, L = base.rotary_dim, base.rope_theta, base.original_context
    cd = math.ceil((d / 2) * math.log(L / (2 * math.pi)) / math.log(theta)) - 1
    return min(max(cd, 0), base.n_pairs - 1)


def ntk_left(right: list[float], cd: int) -> list[float]:
    """λ_i = λ_cd^(i/cd) for i < cd."""
    return [right[0] ** (i / cd) for i in range(cd)]


def long_phase(base: BaseRope, target: int, cd: int | None = None) -> Phase:
    s = target / base.original_context
    computed = critical_dim(base)
    if cd is None:
        cd = computed
    elif not 0 <= cd < base.n_pairs:
        raise SpecError(f"--critical-dim {cd} is outside the model's {base.n_pairs} frequency pairs",
                        f"use 0 … {base.n_pairs - 1} (computed for this model: {computed})")
    space = Space(base.n_pairs - cd, grid_bound(s, up=True), grid_bound(2 * s, up=False))

    def expand(genes: Genes) -> list[float]:
        right = [round(g / GRID, 2) for g in genes]
        return ntk_left(right, cd) + right

    def spec_for(genes: Genes) -> RopeSpec:
        return build_spec("longrope", base, factors=expand(genes), target_context=target)

    seeds = []
    for level in LEVELS:
        value = min(max(grid_bound(level * s, up=False), space.lo), space.hi)
        seeds.append((f"{level:g}s", (value,) * space.n))
    refs = {"PI": build_spec("linear", base, target_context=target), "NTK": build_spec("ntk", base, target_context=target),
            "YaRN": build_spec("yarn", base, target_context=target)}
    return Phase("long", space, seeds, expand, spec_for, refs, target, "needle_ppl",
                 {"critical_dim": cd, "critical_dim_computed": computed, "scale": s,
                  "search_range": [space.lo / GRID, space.hi / GRID]})
