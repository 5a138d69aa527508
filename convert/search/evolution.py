"""The LongRoPE evolutionary search (arXiv 2402.13753 Alg. 1; reference `evolution/algorithms/dim_mono.py`).

Genes are integers in hundredths (λ = gene / 100, the paper's 0.01 step), so a candidate is an exact, hashable
tuple: the cache key, the "is it new" test and the JSON checkpoint never depend on float rounding.

One generation: the top-k of the population are the parents; `mutations` children are mutants of random parents,
`crossovers` children are crosses of two random parents (falling back to a mutant after 20 failed tries, as the
reference does); the next population is parents ∪ children. Every operator keeps the genes non-decreasing *by
construction*: a mutated gene is redrawn between its (already final) left neighbour and its right neighbour, and a
crossover is only accepted when monotone. Children must be new (never evaluated before).

The whole state — population, the RNG's own state, every evaluation so far — lives in one JSON checkpoint written
after every evaluation, so a search killed at any point resumes with the same trajectory: the generation is replayed
from its start (same RNG state, same "seen" set) and the evaluations already on disk are reused, not recomputed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

GRID = 100  # genes per unit of λ: the paper's 0.01 step
CROSSOVER_TRIES = 20  # reference dim_mono.py: max_crossover_try
MUTATION_TRIES = 200  # redraws before a parent is declared unable to give a new child (tiny spaces)

Genes = tuple[int, ...]


@dataclass(frozen=True)
class Space:
    """n genes, each in [lo, hi] (hundredths), non-decreasing."""

    n: int
    lo: int
    hi: int

    def snap(self, factors: Sequence[float]) -> Genes:
        """Nearest grid point of a factor vector, clipped into the space (rounding keeps monotone order)."""
        return tuple(int(min(max(round(f * GRID), self.lo), self.hi)) for f in factors)

    def contains(self, genes: Genes) -> bool:
        return (len(genes) == self.n and all(self.lo <= g <= self.hi for g in genes)
                and all(a <= b for a, b in zip(genes, genes[1:])))


def mutate(rng: np.random.Generator, genes: Genes, space: Space, p: float) -> Genes:
    """Each gene, with probability p, redrawn uniformly on the grid between its neighbours (dim 0 from the lower
    bound, the last dim up to the upper bound). Left to right, so the left neighbour is already final."""
    g = list(genes)
    for i in range(space.n):
        if rng.random() >= p:
            continue
        left = space.lo if i == 0 else g[i - 1]
        right = space.hi if i == space.n - 1 else g[i + 1]
        g[i] = int(rng.integers(left, right + 1))
    return tuple(g)


def crossover(rng: np.random.Generator, a: Genes, b: Genes, p: float) -> Genes:
    """Copy parent a; each gene, with probability p and then ½, taken from parent b (reference dim_mono.py)."""
    return tuple(bi if (rng.random() < p and rng.random() < 0.5) else ai for ai, bi in zip(a, b))


def new_mutant(rng, parent: Genes, space: Space, p: float, seen: set) -> Genes | None:
    for _ in range(MUTATION_TRIES):
        child = mutate(rng, parent, space, p)
        if child not in seen:
            return child
    return None


def new_cross(rng, a: Genes, b: Genes, space: Space, p: float, seen: set) -> tuple[str, Genes | None]:
    for _ in range(CROSSOVER_TRIES):
        child = crossover(rng, a, b, p)
        if child not in seen and space.contains(child):
            return "crossover", child
    return "mutation", new_mutant(rng, a, space, p, seen)


@dataclass(frozen=True)
class Settings:
    population: int = 64
    parents: int = 32
    mutations: int = 16
    crossovers: int = 16
    p: float = 0.3
    generations: int = 40  # iterations after the initial population (paper T = 40)
    patience: int = 10  # stop when the best improved by less than min_delta over this many generations
    min_delta: float = 1e-3  # the research branch's threshold
    budget: int = 1344  # evaluations at most (64 + 40·32 = the paper's full run)

    @classmethod
    def for_population(cls, population: int, **kw) -> "Settings":
        """The paper's proportions: top-P/2 parents, P/4 mutants and P/4 crosses per generation (64 → 32/16/16)."""
        return cls(population=population, parents=max(1, population // 2), mutations=max(1, population // 4),
                   crossovers=max(1, population // 4), **kw)


def fresh_state(seed: int | list[int]) -> dict:
    """A phase that has not started: generation 0 is the initial population."""
    return {"generation": 0, "population": [], "best_history": [], "n_seen": 0, "stale": 0,
            "rng": np.random.default_rng(seed).bit_generator.state, "evaluations": [], "done": False,
            "stop_reason": None}


def _fitness(record: dict) -> float:
    value = record["fitness"]
    return math.inf if value is None else float(value)


class Evolution:
    """Runs one phase. `evaluate(genes) -> float` is the (expensive) fitness, lower is better; `save(state)` is
    called after every evaluation and every generation; `expand(genes)` gives the factor vector to log.
    `evaluate_many(list of genes)`, when given, replaces `evaluate`: it yields (fitness, seconds) per candidate in
    order, so a generation's children can be measured in parallel (ropeconvert/fanout.py) with the same records."""

    def __init__(self, space: Space, seeds: Sequence[tuple[str, Genes]], settings: Settings,
                 evaluate: Callable[[Genes], float] | None, expand: Callable[[Genes], list[float]],
                 save: Callable[[dict], None], state: dict, progress: Callable[[dict], None] | None = None,
                 evaluate_many: Callable[[list[Genes]], Iterator[tuple[float, float]]] | None = None):
        self.space, self.settings, self.expand, self.save = space, settings, expand, save
        self.evaluate_many = evaluate_many or (lambda genes: _timed(evaluate, genes))
        self.seeds = [(name, g) for name, g in seeds if space.contains(g)]
        self.state, self.progress = state, progress or (lambda record: None)

    def run(self, stop_after: int | None = None) -> dict:
        """Run generations until done (budget, plateau, generations, exhausted space) or `stop_after` more of them."""
        st, done_now = self.state, 0
        while not st["done"] and (stop_after is None or done_now < stop_after):
            self._generation()
            done_now += 1
        return st

    # ---- one generation ----------------------------------------------------------------------------------------
    def _generation(self) -> None:
        st, s = self.state, self.settings
        rng = np.random.default_rng()
        rng.bit_generator.state = st["rng"]
        prefix = st["evaluations"][:st["n_seen"]]
        seen = {tuple(r["genes"]) for r in prefix}
        on_disk = st["evaluations"][st["n_seen"]:]  # evaluated after the last generation's checkpoint: replayed
        gen = st["generation"]
        children = self._initial(rng, seen) if gen == 0 else self._children(rng, seen)
        fitness = {tuple(r["genes"]): _fitness(r) for r in prefix}
        todo = children[:max(0, s.budget - len(seen))]
        out_of_budget = len(todo) < len(children)
        kept = 0  # evaluated before an interruption (a prefix of this generation, in order): reused, not recomputed
        while kept < min(len(todo), len(on_disk)) and tuple(on_disk[kept]["genes"]) == todo[kept][1]:
            kept += 1
        del st["evaluations"][len(prefix) + kept:]  # (nothing is dropped on a faithful replay)
        fresh = self.evaluate_many([genes for _, genes in todo[kept:]])
        evaluated = []
        for i, (kind, genes) in enumerate(todo):
            if i < kept:
                record = on_disk[i]
            else:
                value, seconds = next(fresh)  # in order: a fan-out yields its results in submission order
                record = {"generation": gen, "kind": kind, "genes": list(genes), "factors": self.expand(genes),
                          "fitness": value if math.isfinite(value) else None, "seconds": round(seconds, 3)}
                st["evaluations"].append(record)
                self.save(st)
            self.progress(record)
            evaluated.append(genes)
            fitness[genes] = _fitness(record)
        if gen == 0:
            population = evaluated
        else:
            population = self._parents(st["population"], fitness) + evaluated
        best = min(fitness.values()) if fitness else math.inf
        history = st["best_history"] + [None if not math.isfinite(best) else best]
        stale = st["stale"] + 1 if len(history) > 1 and _improved(history[-2], best) < s.min_delta else 0
        st.update(generation=gen + 1, population=[list(g) for g in population], best_history=history,
                  n_seen=len(st["evaluations"]), stale=stale, rng=rng.bit_generator.state)
        reason = None
        if out_of_budget or len(st["evaluations"]) >= s.budget:
            reason = f"budget of {s.budget} evaluations reached"
        elif gen >= s.generations:
            reason = f"{s.generations} generations done"
        elif gen > 0 and stale >= s.patience:
            reason = f"plateau: best improved by less than {s.min_delta:g} over {s.patience} generations"
        elif not evaluated:
            reason = "no new candidate could be made (search space exhausted)"
        st.update(done=reason is not None, stop_reason=reason)
        self.save(st)

    def _initial(self, rng, seen: set) -> list[tuple[str, Genes]]:
        """The seeds (PI, NTK, YaRN … deduplicated), then mutants of random seeds up to the population size."""
        out, taken = [], set(seen)
        for name, genes in self.seeds:
            if genes not in taken and len(out) < self.settings.population:
                out.append((f"seed:{name}", genes))
                taken.add(genes)
        tries = 0
        while len(out) < self.settings.population and self.seeds and tries < MUTATION_TRIES:
            _, parent = self.seeds[int(rng.integers(len(self.seeds)))]
            child = new_mutant(rng, parent, self.space, self.settings.p, taken)
            tries += child is None
            if child is not None:
                out.append(("mutation", child))
                taken.add(child)
        return out

    def _parents(self, population: list, fitness: dict) -> list[Genes]:
        ranked = sorted((tuple(g) for g in population), key=lambda g: fitness.get(g, math.inf))  # stable on ties
        return ranked[:self.settings.parents]

    def _children(self, rng, seen: set) -> list[tuple[str, Genes]]:
        st, s = self.state, self.settings
        fitness = {tuple(r["genes"]): _fitness(r) for r in st["evaluations"][:st["n_seen"]]}
        parents = self._parents(st["population"], fitness)
        out, taken = [], set(seen)
        for _ in range(s.mutations):
            child = new_mutant(rng, parents[int(rng.integers(len(parents)))], self.space, s.p, taken)
            if child is not None:
                out.append(("mutation", child))
                taken.add(child)
        for _ in range(s.crossovers):
            if len(parents) >= 2:
                i, j = rng.choice(len(parents), size=2, replace=False)
                kind, child = new_cross(rng, parents[int(i)], parents[int(j)], self.space, s.p, taken)
            else:
                kind, child = "mutation", new_mutant(rng, parents[0], self.space, s.p, taken)
            if child is not None:
                out.append((kind, child))
                taken.add(child)
        return out


def _timed(evaluate: Callable[[Genes], float], candidates: list[Genes]) -> Iterator[tuple[float, float]]:
    for genes in candidates:  # lazily: each is measured only when the loop asks (a checkpoint after each)
        start = time.perf_counter()
        yield float(evaluate(genes)), time.perf_counter() - start


def _improved(before: float | None, now: float) -> float:
    if before is None:
        return math.inf if math.isfinite(now) else 0.0
    return before - now


def best_record(state: dict) -> dict | None:
    records = [r for r in state["evaluations"] if r["fitness"] is not None]
    return min(records, key=_fitness) if records else None
