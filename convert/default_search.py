"""The searches the main command runs itself when a searched method comes without its file (issue #20).

`ropeconvert MODEL --method longrope` with no --factors and no catalog entry (convert/catalog.py) runs the LongRoPE
search, and `--method dpe` with neither --scales nor --dpe-map runs DPE's detection, with a default budget
(`--search-budget`, evaluations), on the model already resolved (and, under --method auto, already loaded). They are
the `ropeconvert search` engines with smaller settings, not new code:
- longrope: population min(8, budget), as many generations as the budget pays for, one fitness document — the
  first document of the corpus long enough (--method auto never selects on it);
- dpe: the detection's defaults with the most dimension groups (8, 4, 2 or 1) whose sweep fits the budget.
Before the slow part one line says what will run; after the first evaluation one line estimates the rest. The search
is kept in a work directory beside the output (`<out>.search`, `ropeconvert search`'s own layout: factors.json or
dpe_map.json, the log and search.png), so an interrupted run continues with --resume, and the file can be passed as
--factors / --dpe-map later. --no-search refuses instead, naming both ways out.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ropeconvert.convert.search.options import SearchOptions
from ropeconvert.errors import SpecError

DEFAULT_BUDGET = 16  # evaluations: minutes for a 135M model at 16k on a GPU, about an hour on a 2-core CPU
GROUPS = (8, 4, 2, 1)  # DPE: the most groups whose sweep fits the budget


def work_dir(out: Path, suffix: str = ".search") -> Path:
    """Where a default search (or --method auto) keeps its work: beside the output, never inside it."""
    out = Path(out)
    return out.with_name(out.name + suffix)


def refuse(method: str, budget: int) -> None:
    """`--no-search` and nothing to build the method from."""
    if method == "longrope":
        raise SpecError("longrope needs factors: no --factors, no catalog entry for this model at this target, and "
                        "--no-search forbids searching",
                        f"pass --factors FILE (e.g. from `ropeconvert search --method longrope`), or drop --no-search "
                        f"to run the default search ({budget} evaluations, --search-budget)")
    raise SpecError("dpe needs group scales: no --scales, no --dpe-map, and --no-search forbids the detection",
                    f"pass --dpe-map FILE (from `ropeconvert search --method dpe`) or --scales g1,g2,…, or drop "
                    f"--no-search to run the default detection ({budget} evaluations, --search-budget)")


def longrope_options(model: str, target: int, budget: int, *, seed: int, text: str, out: Path, resume: bool,
                     force: bool, progress: bool, original_context: int | None, fan=None) -> SearchOptions:
    if budget < 2:
        raise SpecError(f"--search-budget must be at least 2 evaluations, got {budget}")
    population = min(8, budget)
    per_generation = 2 * max(1, population // 4)  # evolution.Settings.for_population: P/4 mutants + P/4 crosses
    generations = math.ceil((budget - population) / per_generation)
    return SearchOptions(model=model, method="longrope", target_context=target, budget=budget, population=population,
                         generations=generations, documents=1, seed=seed, text=text, out=out, resume=resume,
                         force=force, progress=progress, original_context=original_context, **_fan_fields(fan))


def _fan_fields(fan) -> dict:
    """--workers/--ray/--gpus-per-worker of the main command, for the search it runs (ropeconvert/fanout.py)."""
    return {} if fan is None else {"workers": fan.workers, "ray": fan.ray, "gpus_per_worker": fan.gpus_per_worker}


def dpe_options(model: str, target: int, budget: int, base, *, seed: int, text: str, out: Path, resume: bool,
                force: bool, progress: bool, original_context: int | None, window: int | None = None,
                topk: int | None = None, fan=None) -> SearchOptions:
    from ropeconvert.convert.search import dpe

    probe = SearchOptions(model=model, method="dpe", target_context=target, original_context=original_context,
                          window=window, topk=topk)
    _, _, _, candidates, _, _ = dpe.plan(probe, base)
    groups = next((g for g in GROUPS if g <= base.n_pairs and dpe.evaluations_needed(candidates, g, None) <= budget),
                  None)
    if groups is None:
        need = dpe.evaluations_needed(candidates, 1, None)
        raise SpecError(f"--search-budget {budget} is too small for DPE's detection at {target} tokens (it needs at "
                        f"least {need} evaluations: one per candidate scale)", f"pass --search-budget {need} or more")
    return SearchOptions(model=model, method="dpe", target_context=target, groups=groups, seed=seed, text=text,
                         out=out, resume=resume, force=force, progress=progress, original_context=original_context,
                         window=window, topk=topk, **_fan_fields(fan))


def run(o: SearchOptions, source, runtime=None, say: Callable[[str], None] = lambda line: None, pool=None) -> Path:
    """Run search `o` on `source` (a loaded `runtime` of it is reused) and return the file the method reads:
    factors.json (longrope) or dpe_map.json (dpe)."""
    from ropeconvert.convert.search import dpe, run as longrope_run
    from ropeconvert.errors import InputError

    planned = o.budget if o.method != "dpe" else None

    def estimate(seconds: float, evaluations: int) -> None:
        say(f"{o.method} search: first evaluation took {seconds:.1f} s → about {duration(seconds * evaluations)} "
            f"for {evaluations} evaluations")

    if o.method == "dpe":
        say(f"dpe: no --scales or --dpe-map: running DPE's detection ({o.groups} groups, 4-needle retrieval at "
            f"{o.target_context} tokens) in {o.out}")
        result = dpe.search(o, source=source, runtime=runtime, estimate=estimate, pool=pool)
        return result.map
    say(f"longrope: no --factors and no catalog entry: searching (population {o.population}, at most {planned} "
        f"evaluations + 3 references, {o.documents} document at {o.target_context} tokens) in {o.out}")
    result = longrope_run.search(o, source=source, runtime=runtime, estimate=estimate, pool=pool)
    if not result.complete or result.factors is None:
        raise InputError(f"the longrope search in {o.out} did not finish", "run the command again with --resume")
    return result.factors


def duration(seconds: float) -> str:
    """An estimate in words: seconds below a minute and a half, else minutes."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
