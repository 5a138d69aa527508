"""The command line: a thin typer shell over convert/pipeline.py and friends.

`ropeconvert MODEL --method M …` is the main command (the group forwards anything that is not a subcommand name to
`convert`); subcommands: methods, inspect, verify here; publish, validate (cli_publish_validate.py) and search (cli_search.py). Errors become one line
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
from ropeconvert.cli_publish_validate import PUBLISH_EXAMPLES, VALIDATE_EXAMPLES, note as _note, publish, validate
from ropeconvert.cli_search import SEARCH_EXAMPLES, search
from ropeconvert.errors import RopeConvertError
from ropeconvert.validators.runtime_check import check_runtimes_command

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


app = typer.Typer(
    cls=DefaultToConvert, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Extend the context of a RoPE model (YaRN, LongRoPE, PI, NTK, Llama-3, …) and export it to HF and GGUF so "
         "that transformers, llama.cpp and vLLM run it with no extra flags.\n\n"
         "Main form: ropeconvert MODEL --method METHOD (--factor S | --target-context N) [--to hf|gguf|both] "
         "[--out PATH] — all its options: ropeconvert convert --help.",
    epilog="Examples:\n\n" + "\n\n".join(CONVERT_EXAMPLES + ["ropeconvert validate smol-yarn-16k --tasks ppl",
                                                                "ropeconvert methods --models"]))


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
    base_model: Optional[str] = typer.Option(None, "--base-model", metavar="ORG/NAME", help="The Hub id MODEL is a copy of, recorded for the model card's base_model (a local directory is otherwise 'a local model')."),
    validate: bool = typer.Option(False, "--validate", help="Then measure base vs extended (ppl, passkey) and write the report."),
):
    """Extend MODEL's context with METHOD and export it."""
    from ropeconvert.convert.pipeline import convert as run

    if push is not None:  # refuse a bad repo id or a missing token before the slow part
        from ropeconvert.formats.hub import preflight

        preflight(push)
    if base_model is not None:
        from ropeconvert.formats.hub import check_repo_id

        check_repo_id(base_model)

    knobs = dict(factor=factor, target_context=target_context, beta_fast=beta_fast, beta_slow=beta_slow,
                 attention_factor=attention_factor, mscale=mscale, mscale_all_dim=mscale_all_dim,
                 low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor, factors=factors,
                 short_factors=short_factors, allow_non_monotone=allow_non_monotone or None, window=window,
                 group_size=group_size, scales=scales, topk=topk, dpe_map=dpe_map)
    result = run(model, method, to=to, out=out, knobs=knobs, original_context=original_context, force=force,
                 link=link, replace_scaling=replace_scaling, revision=revision, progress=not quiet,
                 outtype=outtype, static=static, base_model=base_model)
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
            say(f"{'warning' if note.startswith(('APPROXIMATION', 'RUNTIME')) else 'note'}: {note}")
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
            published.append(publish(path, repo, private=private, progress=not quiet, log=_note, base_model=base_model))
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
def corpora(only: Optional[str] = typer.Option(None, "--only", help="Fetch one corpus: austen or shakespeare.")):
    """Fetch the offline corpora (Austen, Shakespeare) for validate and search.

    They go to $ROPECONVERT_CORPORA, else ~/.cache/ropeconvert/corpora: the one place validate, search, make and the
    tests look."""
    from ropeconvert.errors import UnknownNameError
    from ropeconvert.validators.corpora_fetch import fetch

    names = ("austen", "shakespeare")
    if only is not None and only not in names:
        raise UnknownNameError(f"unknown corpus {only!r}", "choose austen or shakespeare")
    fetch((only,) if only else names, log=typer.echo)


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
        typer.echo(f"{key:<24} {value}")


@app.command()
def verify(export: Path = typer.Argument(..., help="An export directory or .gguf file written by ropeconvert."),
           source: Optional[Path] = typer.Option(None, "--source", help="The source it was made from (HF directory, or the GGUF it was re-extended from): weights compared byte for byte. Exports record no machine path."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Only report problems.")):
    """Re-check an export: sha256 of every file (HF) or of the whole file (GGUF), rope = the spec it was made from,
    and with --source the weights identical to the source's."""
    from ropeconvert.errors import InputError
    from ropeconvert.formats.gguf_read import is_gguf

    if export.is_dir():
        from ropeconvert.formats.manifest import verify_hf as check
    elif export.is_file() and (is_gguf(export) or export.suffix == ".gguf"):  # a damaged magic is a change too
        from ropeconvert.formats.gguf_integrity import verify_gguf as check
    else:
        raise InputError(f"{export} is neither an export directory nor a GGUF file", "pass what ropeconvert wrote")
    if source is not None and not source.exists():
        raise InputError(f"--source {source} not found", "pass the directory or .gguf the export was made from")
    problems, done = check(export, source)
    for line in ([] if quiet else done):
        typer.echo(f"ok    {line}")
    for line in problems:
        typer.echo(f"FAIL  {line}")
    if problems:
        raise InputError(f"verification failed: {len(problems)} problem(s), first: {problems[0]}",
                         "re-export, or restore the changed files")
    typer.echo(f"{export}: intact")


# the heavier subcommands live in their own modules; registered here so `ropeconvert --help` lists them in order
app.command(epilog="Examples:\n\n" + "\n\n".join(PUBLISH_EXAMPLES))(publish)
app.command(epilog="Examples:\n\n" + "\n\n".join(VALIDATE_EXAMPLES))(validate)
app.command(epilog="Examples:\n\n" + "\n\n".join(SEARCH_EXAMPLES))(search)
app.command("check-runtimes", epilog="Example:\n\nropeconvert check-runtimes out/smollm2-135m-yarn-16k")(check_runtimes_command)


def main() -> None:
    from ropeconvert import signals  # SIGTERM/SIGHUP end a run like Ctrl-C: one line, temporaries removed, 128+n

    signals.install()
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
        sys.exit(signals.interrupted_exit())
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
