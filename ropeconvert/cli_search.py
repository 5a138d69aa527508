"""`ropeconvert search`: LongRoPE / LongRoPE2 factor search and DPE detection (registered on the app in cli.py)."""
from __future__ import annotations

import json
from inspect import Parameter, Signature

import typer


SEARCH_EXAMPLES = [
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k",
    "ropeconvert search smollm2-135m --method longrope2 --target-context 16384 --short --out smol-lr2-16k",
    "ropeconvert search smollm2-135m --method dpe --target-context 16384 --groups 4 --out smol-dpe-16k",
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k --resume",
    "ropeconvert smollm2-135m --method longrope --factors smol-lr-16k/factors.json --to both",
]


def refuse_foreign_options(ctx: typer.Context, method: str) -> None:
    """One line naming every option given on the command line that the chosen search does not read (the
    `methods` of its SearchOptions field): given to the other kind it would be ignored in silence."""
    try:  # typer ≥ 0.24 vendors click; older releases use the click package itself
        from typer._click.core import ParameterSource
    except ImportError:  # pragma: no cover
        from click.core import ParameterSource

    from ropeconvert.convert.search.options import METHODS, foreign, readers
    from ropeconvert.errors import UnknownNameError, UnsupportedError

    if method not in METHODS:
        raise UnknownNameError(f"unknown search method {method!r}", f"choose one of: {', '.join(METHODS)}")
    given = [name for name in foreign(method) if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        other = "/".join(sorted(set().union(*(readers(n) for n in given)), key=METHODS.index))
        raise UnsupportedError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to search --method {method} "
                               f"(only to --method {other})", f"drop {'it' if len(given) == 1 else 'them'}, or "
                               f"choose the method {'it belongs' if len(given) == 1 else 'they belong'} to")


def search(ctx: typer.Context, **given):
    """Search LongRoPE / LongRoPE2 rescale factors, or DPE group scales, on the model itself; writes factors.json
    (dpe: dpe_map.json), a JSON log of every evaluation and search.png."""
    from ropeconvert.convert.search import dpe, run
    from ropeconvert.convert.search.options import SearchOptions
    from ropeconvert.validators.options import parse_list

    refuse_foreign_options(ctx, given["method"])
    text, corpus, quiet, as_json = (given.pop(k) for k in ("text", "corpus", "quiet", "as_json"))
    given["lengths"] = parse_list("--lengths", given["lengths"])  # a malformed list is refused before any load
    o = SearchOptions(**given, text=str(text) if text else corpus, progress=not quiet)
    if o.method == "dpe":
        return _print_dpe(o.model, dpe.search(o), as_json)
    result = run.search(o)
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
        typer.echo(f"export: ropeconvert {o.model} --method longrope --factors {result.factors}")
    else:
        typer.echo(f"stopped early; continue with: ropeconvert search … --out {result.out} --resume")


def _print_dpe(model: str, result, as_json: bool) -> None:
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


def _signature() -> Signature:
    """SearchOptions' fields, --text/--corpus for its `text`, --quiet for its `progress`, then --json."""
    from ropeconvert.cli_options import AsJson, Corpus, Quiet, Text, field_parameters, parameter
    from ropeconvert.convert.search.options import SearchOptions

    ctx = Parameter("ctx", Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    params = field_parameters(SearchOptions)
    at = [p.name for p in params].index("documents") + 1
    return Signature([ctx, *params[:at], parameter("text", Text, None), parameter("corpus", Corpus, "austen"),
                      *params[at:], parameter("quiet", Quiet, False), parameter("as_json", AsJson, False)])


search.__signature__ = _signature()  # typer reads the options from the signature
