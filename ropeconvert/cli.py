"""The command line: a thin typer shell over convert/pipeline.py and friends.

`ropeconvert MODEL --method M …` is the main command (the group forwards anything that is not a subcommand name to
`convert`); subcommands: methods, inspect, verify, publish (and search, validate as they land). Errors become one line
"error: <problem> — <fix>" and exit code 2; ROPECONVERT_DEBUG=1 shows tracebacks.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

try:  # typer ≥ 0.24 vendors click; older releases use the click package itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from ropeconvert import __version__
from ropeconvert.errors import RopeConvertError

DEBUG_ENV = "ROPECONVERT_DEBUG"
CONVERT_EXAMPLES = [
    "ropeconvert smollm2-135m --method yarn --factor 2 --to hf --out smol-yarn-16k",
    "ropeconvert mistral-7b --method longrope --factors factors.csv --target-context 65536 --to gguf",
    "ropeconvert ./my-llama --method llama3 --factor 8 --original-context 8192",
]


class DefaultToConvert(TyperGroup):
    """`ropeconvert MODEL …` means `ropeconvert convert MODEL …`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["convert", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultToConvert, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Extend the context of a RoPE model (YaRN, LongRoPE, PI, NTK, Llama-3, …) and export it "
                       "to HF and GGUF so that transformers, llama.cpp and vLLM run it with no extra flags.")


def _version(value: bool):
    if value:
        typer.echo(f"ropeconvert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    pass


@app.command(epilog="Examples:\n\n" + "\n\n".join(CONVERT_EXAMPLES))
def convert(
    model: str = typer.Argument(..., help="Alias (see `ropeconvert methods --models`), Hub id org/name, HF directory or .gguf file."),
    method: str = typer.Option(..., "--method", "-m", help="Extension method (see `ropeconvert methods`)."),
    to: str = typer.Option("hf", "--to", help="Export format: hf, gguf or both."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output path (default: MODEL-METHOD-NNk[.gguf])."),
    factor: Optional[float] = typer.Option(None, "--factor", "-s", help="Scale s = target / original length (dynamic: α)."),
    target_context: Optional[int] = typer.Option(None, "--target-context", "-t", help="Target length in tokens (instead of --factor)."),
    original_context: Optional[int] = typer.Option(None, "--original-context", help="Override the trained length from the config."),
    beta_fast: Optional[float] = typer.Option(None, help="yarn: rotations above which a pair is kept (default 32)."),
    beta_slow: Optional[float] = typer.Option(None, help="yarn: rotations below which a pair is interpolated (default 1)."),
    attention_factor: Optional[float] = typer.Option(None, help="yarn/longrope: replace the default attention factor."),
    mscale: Optional[float] = typer.Option(None, help="yarn: DeepSeek-style mscale (with --mscale-all-dim)."),
    mscale_all_dim: Optional[float] = typer.Option(None, help="yarn: DeepSeek-style mscale_all_dim."),
    low_freq_factor: Optional[float] = typer.Option(None, help="llama3: low frequency factor (default 1)."),
    high_freq_factor: Optional[float] = typer.Option(None, help="llama3: high frequency factor (default 4)."),
    factors: Optional[Path] = typer.Option(None, "--factors", help="longrope: factor file (CSV, JSON, Phi-3 config.json, search output)."),
    short_factors: Optional[Path] = typer.Option(None, "--short-factors", help="longrope: short factor file."),
    allow_non_monotone: bool = typer.Option(False, "--allow-non-monotone", help="longrope: accept non-monotone factors."),
    window: Optional[int] = typer.Option(None, "--window", help="dpe/selfextend: neighbour window W of exact positions (default original/8)."),
    group_size: Optional[float] = typer.Option(None, "--group-size", help="selfextend: group size G (default: the smallest power of two keeping W+(N−W)/G ≤ original/2)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="dpe: one scale g per dimension group, e.g. 2,8,2,8 (from `ropeconvert search --method dpe`)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="dpe: rescale only the top-k pairs per (layer, head) by mean ‖q_i‖·‖k_i‖ (measured on the model; default all)."),
    dpe_map: Optional[Path] = typer.Option(None, "--dpe-map", help="dpe: the dpe_map.json a DPE search wrote (window, scales, selection)."),
    replace_scaling: bool = typer.Option(False, "--replace-scaling", help="Replace rope scaling the source already has."),
    outtype: Optional[str] = typer.Option(None, "--outtype", help="GGUF tensor type for HF sources: f32, f16 (default), bf16 or q8_0. GGUF sources are copied as they are."),
    static: bool = typer.Option(False, "--static", help="GGUF: bake dynamic NTK at the target length (llama.cpp has no dynamic NTK)."),
    link: bool = typer.Option(False, "--link", help="Hard-link weights instead of copying (same filesystem)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of the source."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    push: Optional[str] = typer.Option(None, "--push", metavar="ORG/NAME", help="Then validate and publish to this Hub repo if validation passed (the GGUF of --to both goes to ORG/NAME-GGUF)."),
    private: bool = typer.Option(False, "--private", help="--push: create the Hub repo private."),
    validate: bool = typer.Option(False, "--validate", help="Then measure base vs extended (ppl, passkey) and write the report."),
):
    """Extend MODEL's context with METHOD and export it."""
    from ropeconvert.convert.pipeline import convert as run

    if push is not None:  # refuse a bad repo id or a missing token before the slow part
        from ropeconvert.formats.hub import preflight

        preflight(push)

    knobs = dict(factor=factor, target_context=target_context, beta_fast=beta_fast, beta_slow=beta_slow,
                 attention_factor=attention_factor, mscale=mscale, mscale_all_dim=mscale_all_dim,
                 low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor, factors=factors,
                 short_factors=short_factors, allow_non_monotone=allow_non_monotone or None, window=window,
                 group_size=group_size, scales=scales, topk=topk, dpe_map=dpe_map)
    result = run(model, method, to=to, out=out, knobs=knobs, original_context=original_context, force=force,
                 link=link, replace_scaling=replace_scaling, revision=revision, progress=not quiet,
                 outtype=outtype, static=static)
    say = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo  # --json: stdout holds only JSON
    if not as_json:
        s = result.spec
        say(f"{s.method}: {s.original_context} → {s.target_context} tokens (s = {s.scale:g}), "
            f"rope_theta {s.rope_theta:g}, attention factor {s.attention_factor:.6g}")
        if s.position_map is not None:
            pm = s.position_map
            chosen = "all pairs" if pm.selected is None else f"top {int(pm.selected[0, 0].sum())} of {pm.n_pairs} pairs"
            say(f"position map: window {pm.window}, pair groups {list(pm.boundaries)}, scales "
                f"{[float(f'{g:g}') for g in pm.scales]}, {chosen} per (layer, head); runs in transformers with "
                "`import ropeconvert` (attn_implementation ropeconvert_dpe)")
        for note in result.notes:  # llama.cpp running an approximation of a position map is a warning
            say(f"{'warning' if note.startswith('APPROXIMATION') else 'note'}: {note}")
        for kind, path in result.outputs.items():
            say(f"wrote {kind.upper()} export: {path}")
    if validate or push is not None:  # --push implies --validate: only validated exports are published
        from ropeconvert.validators.command import validate_outputs

        for line in validate_outputs(result.outputs, model, quiet):
            say(line)
    published = []
    if push is not None:  # publish refuses an export whose validation failed: the card shows the evidence
        from ropeconvert.formats.hub import publish

        for kind, path in result.outputs.items():
            repo = push + "-GGUF" if kind == "gguf" and len(result.outputs) > 1 else push
            published.append(publish(path, repo, private=private, progress=not quiet, log=_note))
            for line in published[-1].lines():
                say(line)
    if as_json:
        extra = {"published": [r.to_dict() for r in published]} if published else {}
        typer.echo(json.dumps({**result.to_dict(), **extra}, indent=2))


@app.command()
def methods(models: bool = typer.Option(False, "--models", help="List the model aliases instead.")):
    """List the extension methods (with papers), or the model aliases."""
    if models:
        from ropeconvert.formats.source import ALIASES

        for name, target in ALIASES.items():
            typer.echo(f"{name:<18} {target}")
        return
    from ropeconvert.convert.methods import METHODS

    for _, m in METHODS.items():
        typer.echo(f"{m.name:<9} {m.summary}")
        typer.echo(f"{'':<9} HF: {m.hf}; GGUF: {m.gguf}")
        typer.echo(f"{'':<9} {m.paper}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="An HF model directory or a .gguf file."),
            as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Show the rope a checkpoint carries: type, theta, factors, original/target length."""
    from ropeconvert.formats.inspect import describe

    info = describe(path)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:<22} {value}")


@app.command()
def verify(export: Path = typer.Argument(..., help="An export directory or .gguf file written by ropeconvert."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Only report problems.")):
    """Re-check an export: sha256 of every file (HF) or of the tensor data (GGUF), weights identical to the source,
    rope = the spec it was made from."""
    from ropeconvert.errors import InputError
    from ropeconvert.formats.gguf_read import is_gguf

    if export.is_dir():
        from ropeconvert.formats.manifest import verify_hf as check
    elif export.is_file() and is_gguf(export):
        from ropeconvert.formats.gguf_integrity import verify_gguf as check
    else:
        raise InputError(f"{export} is neither an export directory nor a GGUF file", "pass what ropeconvert wrote")
    problems, done = check(export)
    for line in ([] if quiet else done):
        typer.echo(f"ok    {line}")
    for line in problems:
        typer.echo(f"FAIL  {line}")
    if problems:
        raise InputError(f"verification failed: {len(problems)} problem(s), first: {problems[0]}",
                         "re-export, or restore the changed files")
    typer.echo(f"{export}: intact")


PUBLISH_EXAMPLES = [
    "ropeconvert publish smollm2-135m-yarn-16k --repo my-org/smollm2-135m-yarn-16k --dry-run",
    "ropeconvert publish smollm2-135m-yarn-16k.gguf --repo my-org/smollm2-135m-yarn-16k-GGUF --private",
]


VALIDATE_EXAMPLES = [
    "ropeconvert validate smollm2-135m-yarn-16k --base smollm2-135m --tasks ppl,passkey --lengths 4096,8192,16384",
    "ropeconvert validate out.gguf --base model.gguf --tasks ppl --text my_books/",
    "ropeconvert validate --parity smollm2-135m-yarn-16k smollm2-135m-yarn-16k.gguf",
]


@app.command(epilog="Examples:\n\n" + "\n\n".join(PUBLISH_EXAMPLES))
def publish(
    export: Path = typer.Argument(..., help="An export written by ropeconvert: HF directory or .gguf file."),
    repo: str = typer.Option(..., "--repo", metavar="ORG/NAME", help="Hub repository (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if missing; default main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write the card locally; upload nothing."),
    skip_validation: bool = typer.Option(False, "--skip-validation", help="Publish without a passed validation; the card says so."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Publish an export to the Hugging Face Hub in one commit, with a model card built from its validation report.

    The token comes from HF_TOKEN or `hf auth login` and is never printed or written anywhere."""
    from ropeconvert.formats.hub import publish as run

    result = run(export, repo, private=private, revision=revision, dry_run=dry_run, skip_validation=skip_validation,
                 progress=not quiet, log=_note)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for line in result.lines():
        typer.echo(line)


@app.command(epilog="Examples:\n\n" + "\n\n".join(VALIDATE_EXAMPLES))
def validate(
    export: Path = typer.Argument(..., help="The export: HF directory or .gguf (with --parity: the HF directory)."),
    gguf: Optional[Path] = typer.Argument(None, help="--parity only: the GGUF export to compare with."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (alias, Hub id, path); default: the export's recorded source."),
    tasks: str = typer.Option("ppl,passkey", "--tasks", help="Comma-separated: ppl, passkey, niah."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Token lengths, e.g. 4096,8192,16384 (default: original/2, original, target)."),
    passkey_lengths: Optional[str] = typer.Option(None, "--passkey-lengths", help="Passkey lengths (default: --lengths)."),
    niah_lengths: Optional[str] = typer.Option(None, "--niah-lengths", help="4-needle lengths (default: --lengths)."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Passkey depths in [0, 1] (default 0.1,0.5,0.9)."),
    trials: int = typer.Option(2, "--trials", help="Passkey trials per (length, depth) cell."),
    niah_samples: int = typer.Option(2, "--niah-samples", help="4-needle samples per length."),
    documents: int = typer.Option(2, "--documents", help="Perplexity documents."),
    text: Optional[Path] = typer.Option(None, "--text", help="Your own text: a .txt file or a directory of them."),
    corpus: str = typer.Option("austen", "--corpus", help="Offline corpus: austen or shakespeare."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Hub dataset instead (online): pg19, proof-pile or ORG/NAME[:GLOB]."),
    truncate: bool = typer.Option(True, "--truncate/--sliding", help="One window per document, or slide with --stride."),
    stride: int = typer.Option(256, "--stride", help="--sliding: tokens between windows."),
    max_windows: int = typer.Option(10, "--max-windows", help="--sliding: windows per document at most."),
    parity: bool = typer.Option(False, "--parity", help="Compare an HF export (transformers) with a GGUF (llama.cpp)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="--parity: sequence length (default original + 1024)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    seed: int = typer.Option(0, "--seed", help="Seed for passkeys and needles."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Measure base vs extended (perplexity, passkey, 4-needle) and write report.json, PNG plots and report.md."""
    from ropeconvert.validators import command

    if parity or gguf is not None:
        if not (parity and gguf is not None):
            raise click_exc.UsageError("a second path needs --parity, and --parity needs HF_DIR and GGUF")
        from ropeconvert.validators.parity import parity as run_parity

        result, path = run_parity(export, gguf, tokens=tokens, corpus=str(text) if text else corpus, device=device)
        typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(command.parity_lines(result, path)))
        return
    report, path, lines = command.run(
        export, base, tasks=tasks, lengths=lengths, passkey_lengths=passkey_lengths, niah_lengths=niah_lengths,
        depths=depths, trials=trials, niah_samples=niah_samples, documents=documents, text=text, corpus=corpus,
        dataset=dataset, truncate=truncate, stride=stride, max_windows=max_windows, device=device, seed=seed,
        quiet=quiet)
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(lines))


SEARCH_EXAMPLES = [
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k",
    "ropeconvert search smollm2-135m --method longrope2 --target-context 16384 --short --out smol-lr2-16k",
    "ropeconvert search smollm2-135m --method dpe --target-context 16384 --groups 4 --out smol-dpe-16k",
    "ropeconvert search smollm2-135m --method longrope --target-context 16384 --budget 250 --population 32 --out smol-lr-16k --resume",
    "ropeconvert smollm2-135m --method longrope --factors smol-lr-16k/factors.json --to both",
]


@app.command(epilog="Examples:\n\n" + "\n\n".join(SEARCH_EXAMPLES))
def search(
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
    topk: Optional[int] = typer.Option(None, "--topk", help="dpe: pairs rescaled per (layer, head) (default 3/4 of them)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="dpe: candidate effective lengths ℓ, scale g = target/ℓ (default target, target/2, … ≥ W)."),
    fixed_scale: Optional[float] = typer.Option(None, "--fixed-scale", help="dpe: scale of the groups not being probed (default 2·s)."),
    samples: int = typer.Option(1, "--samples", help="dpe: 4-needle prompts per evaluation."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Run at most N generations now, then leave the checkpoint for --resume."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Search LongRoPE / LongRoPE2 rescale factors, or DPE group scales, on the model itself; writes factors.json
    (dpe: dpe_map.json), a JSON log of every evaluation and search.png."""
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
                               "groups": result.groups, "evaluations": result.evaluations,
                               "seconds": round(result.seconds, 3)}, indent=2))
        return
    for g in result.groups:
        typer.echo(f"group {g['group']} (pairs {g['pairs'][0]}–{g['pairs'][1] - 1}): scale {g['scale']:g}, "
                   f"{g['retrieved']:.0%} of needles retrieved, needle NLL {g['nll'] if g['nll'] is None else round(g['nll'], 3)}")
    typer.echo(f"{result.evaluations} evaluations ({result.new_evaluations} new); wrote {result.map}, {result.log}, "
               f"{result.plot}")
    typer.echo(f"export: ropeconvert {model} --method dpe --dpe-map {result.map}")


def _note(message: str) -> None:
    typer.echo(f"note: {message}", err=True)


def main() -> None:
    debug = os.environ.get(DEBUG_ENV) not in (None, "", "0")
    try:
        code = app(standalone_mode=False)  # returns the exit code of --help / typer.Exit
        if code == 130:  # typer turns Ctrl-C into Exit(130); outputs were already rolled back on the way out
            raise KeyboardInterrupt
    except click_exc.NoArgsIsHelpError as e:
        typer.echo(e.format_message(), err=True)
        sys.exit(2)
    except click_exc.ClickException as e:  # usage errors: unknown option, missing argument, bad value
        typer.echo(f"error: {' '.join(e.format_message().split())} — see ropeconvert --help", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("error: interrupted — nothing was written at the output path", err=True)
        sys.exit(130)
    except RopeConvertError as e:
        if debug:
            raise
        typer.echo(f"error: {e.one_line()}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: say so in one line, traceback on request
        if debug:
            raise
        typer.echo(f"error: internal error ({type(e).__name__}: {' '.join(str(e).split())[:200]}) — "
                   f"this is a bug; rerun with {DEBUG_ENV}=1 for the traceback", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
