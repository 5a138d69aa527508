"""`ropeconvert search`: LongRoPE / LongRoPE2 factor search and DPE detection (registered on the app in cli.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


SEARCH_EXAMPLES = [
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k",
    "ropeconvert search smollm2-135m --method longrope2 --target-context 16384 --short --out smol-lr2-16k",
    "ropeconvert search smollm2-135m --method dpe --target-context 16384 --groups 4 --out smol-dpe-16k",
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k --resume",
    "ropeconvert smollm2-135m --method longrope --factors smol-lr-16k/factors.json --to both",
]


# options that only one kind of search reads: given to the other kind they would be ignored in silence, so refuse
LONGROPE_ONLY = ("population", "generations", "patience", "documents", "short", "short_max", "max_factor",
                 "critical_dim", "stop_after")
DPE_ONLY = ("window", "groups", "topk", "lengths", "fixed_scale", "samples")
METHODS = ("longrope", "longrope2", "dpe")


def refuse_foreign_options(ctx: typer.Context, method: str) -> None:
    """One line naming every option given on the command line that the chosen search does not use."""
    try:  # typer ≥ 0.24 vendors click; older releases use the click package itself
        from typer._click.core import ParameterSource
    except ImportError:  # pragma: no cover
        from click.core import ParameterSource

    from ropeconvert.errors import UnknownNameError, UnsupportedError

    if method not in METHODS:
        raise UnknownNameError(f"unknown search method {method!r}", f"choose one of: {', '.join(METHODS)}")
    foreign = DPE_ONLY if method != "dpe" else LONGROPE_ONLY
    given = [name for name in foreign if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        other = "dpe" if method != "dpe" else "longrope/longrope2"
        raise UnsupportedError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to search --method {method} "
                         f"(only to --method {other})", f"drop {'it' if len(given) == 1 else 'them'}, or choose the method "
                              f"{'it belongs' if len(given) == 1 else 'they belong'} to")


def search(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Base model: alias, Hub id, HF directory or .gguf file."),
    method: str = typer.Option("longrope", "--method", "-m", help="longrope (all pairs, PI/NTK/YaRN seeds), longrope2 (critical dim, needle perplexity) or dpe (per-group scales by 4-needle retrieval)."),
    target_context: Optional[int] = typer.Option(None, "--target-context", "-t", help="Length the factors are searched for."),
    factor: Optional[float] = typer.Option(None, "--factor", "-s", help="Scale s = target / original (instead of --target-context)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Evaluations per phase at most (default population + generations × population/2; the paper's 64/40 → 1344)."),
    population: int = typer.Option(64, "--population", help="Population P (top P/2 are parents; P/4 mutants + P/4 crosses per generation)."),
    generations: int = typer.Option(40, "--generations", help="Generations after the initial population (paper: 40)."),
    patience: int = typer.Option(10, "--patience", help="Stop when the best improved by < 0.001 over this many generations."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search (and of the needles)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default MODEL-METHOD-search-NNk)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search checkpointed in --out (same options)."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that holds a search."),
    documents: int = typer.Option(5, "--documents", "-k", help="Fitness documents (first K of the corpus long enough)."),
    text: Optional[Path] = typer.Option(None, "--text", help="Your own text: a .txt file or a directory of them."),
    corpus: str = typer.Option("austen", "--corpus", help="Offline corpus: austen or shakespeare."),
    short: bool = typer.Option(False, "--short", help="Also search short factors at the original length."),
    short_max: Optional[float] = typer.Option(None, "--short-max", help="--short: largest short factor (default ∛s)."),
    max_factor: Optional[float] = typer.Option(None, "--max-factor", help="longrope: largest factor (default 1.25·s as in the paper; the released code uses 1+s)."),
    critical_dim: Optional[int] = typer.Option(None, "--critical-dim", help="longrope2: first searched pair (default ⌈(d/2)·log_θ(L/2π)⌉ − 1)."),
    original_context: Optional[int] = typer.Option(None, "--original-context", help="Override the trained length from the config."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    window: Optional[int] = typer.Option(None, "--window", help="dpe: neighbour window W (default original/8)."),
    groups: int = typer.Option(8, "--groups", help="dpe: dimension groups (even split of the frequency pairs)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="dpe: pairs rescaled per (layer, head), the top K by ‖q_i‖·‖k_i‖ (default all; the reference: 3/4)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="dpe: candidate effective lengths ℓ, scale g = target/ℓ (default target, target/2, … ≥ W)."),
    fixed_scale: Optional[float] = typer.Option(None, "--fixed-scale", help="dpe: start every group at this scale (default: the best uniform candidate, scored first)."),
    samples: int = typer.Option(1, "--samples", help="dpe: 4-needle prompts per evaluation."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Run at most N generations now, then leave the checkpoint for --resume."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Search LongRoPE / LongRoPE2 rescale factors, or DPE group scales, on the model itself; writes factors.json
    (dpe: dpe_map.json), a JSON log of every evaluation and search.png."""
    refuse_foreign_options(ctx, method)
    if method == "dpe":
        return _search_dpe(model, target_context, factor, window, groups, topk, lengths, fixed_scale, samples, budget,
                           seed, out, resume, force, str(text) if text else corpus, original_context, device, quiet,
                           as_json)
    from ropeconvert.convert.search.run import SearchOptions, search as run

    result = run(SearchOptions(
        model, method=method, target_context=target_context, factor=factor, budget=budget, population=population,
        generations=generations, patience=patience, seed=seed, out=out, resume=resume, force=force,
        documents=documents, text=str(text) if text else corpus, short=short, short_max=short_max,
        max_factor=max_factor, critical_dim=critical_dim, original_context=original_context, device=device,
        stop_after=stop_after, progress=not quiet))
    if as_json:
        typer.echo(json.dumps({"out": str(result.out), "complete": result.complete, "documents": result.documents,
                               "factors": str(result.factors) if result.factors else None, "phases": result.phases,
                               "seconds": round(result.seconds, 3)}, indent=2))
        return
    for name, p in result.phases.items():
        refs = ", ".join(f"{k} {v:.4g}" for k, v in p["references"].items() if v is not None)
        best = "none" if p["best_fitness"] is None else f"{p['best_fitness']:.4g}"
        typer.echo(f"{name}: {p['evaluations']} evaluations, best {best} ({refs}); "
                   f"{p['stop_reason'] or 'not finished'}")
    if result.complete:
        typer.echo(f"wrote {result.factors}, {result.log}, {result.plot}")
        typer.echo(f"export: ropeconvert {model} --method longrope --factors {result.factors}")
    else:
        typer.echo(f"stopped early; continue with: ropeconvert search … --out {result.out} --resume")


def _search_dpe(model, target_context, factor, window, groups, topk, lengths, fixed_scale, samples, budget, seed, out,
                resume, force, text, original_context, device, quiet, as_json) -> None:
    from ropeconvert.convert.search.dpe import DpeOptions, search as run
    from ropeconvert.validators.command import parse_list

    result = run(DpeOptions(
        model, target_context=target_context, factor=factor, window=window, groups=groups, topk=topk,
        lengths=parse_list("--lengths", lengths), fixed_scale=fixed_scale, samples=samples, budget=budget, seed=seed,
        out=out, resume=resume, force=force, text=text, original_context=original_context, device=device,
        progress=not quiet))
    if as_json:
        typer.echo(json.dumps({"out": str(result.out), "map": str(result.map), "scales": result.scales,
                               "retrieved": result.retrieved, "nll": result.nll, "groups": result.groups,
                               "evaluations": result.evaluations,
                               "seconds": round(result.seconds, 3)}, indent=2))
        return
    for g in result.groups:
        typer.echo(f"group {g['group']} (pairs {g['pairs'][0]}–{g['pairs'][1] - 1}): scale {g['scale']:g}, "
                   f"{g['retrieved']:.0%} of needles retrieved, needle NLL {g['nll'] if g['nll'] is None else round(g['nll'], 3)}")
    typer.echo(f"map {','.join(f'{g:g}' for g in result.scales)}: {result.retrieved:.0%} of needles retrieved, "
               f"needle NLL {result.nll if result.nll is None else round(result.nll, 3)}")
    typer.echo(f"{result.evaluations} evaluations ({result.new_evaluations} new); wrote {result.map}, {result.log}, "
               f"{result.plot}")
    typer.echo(f"export: ropeconvert {model} --method dpe --dpe-map {result.map}")
