"""The command line: a thin typer shell over convert/pipeline.py and friends.

`ropeconvert MODEL --method M …` is the main command (the group forwards anything that is not a subcommand name to
`convert`); subcommands: methods, inspect, verify here; publish, validate (cli_publish_validate.py) and search (cli_search.py). Errors become one line
"error: <problem> — <fix>" and exit code 2; ROPECONVERT_DEBUG=1 shows tracebacks.
"""
from __future__ import annotations

import json
import os
import sys
from inspect import Signature
from pathlib import Path
from typing import Optional, get_args

import typer
from typer.core import TyperGroup

try:  # typer ≥ 0.24 vendors click; older releases use the click package itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from ropeconvert import __version__
from ropeconvert.cli_options import AsJson, Quiet, with_help
from ropeconvert.cli_publish_validate import PUBLISH_EXAMPLES, VALIDATE_EXAMPLES, note as _note, publish, validate
from ropeconvert.cli_search import SEARCH_EXAMPLES, search
from ropeconvert.errors import RopeConvertError
from ropeconvert.validators.runtime_check import check_runtimes_command

DEBUG_ENV = "ROPECONVERT_DEBUG"
CONVERT_EXAMPLES = [
    "ropeconvert smollm2-135m --method yarn --factor 2 --to hf --out smol-yarn-16k",
    "ropeconvert mistral-7b --method longrope --factors factors.csv --target-context 65536 --to gguf",
    "ropeconvert ./my-llama --method llama3 --factor 8 --original-context 8192",
    "ropeconvert smollm2-135m --method auto --target-context 16384 --to gguf",
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


def convert(**given):
    """Extend MODEL's context with METHOD and export it."""
    from ropeconvert.convert.methods import knobs as knob_table
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert as run

    quiet, as_json = given.pop("quiet"), given.pop("as_json")
    text, corpus = given.pop("text"), given.pop("corpus")
    given["text"] = str(text) if text else corpus
    # unset knobs are None (a bool knob's absent flag too): build_spec passes on only what the user set
    knobs = {name: given.pop(name) for name in knob_table.cli_names()}
    knobs = {name: None if value is False else value for name, value in knobs.items()}
    # convert → validate (--validate, --push) → publish (--push)
    # each stage's lines as soon as it is done; --json: stdout holds only the JSON, the lines go to stderr
    result = run(ConvertOptions(**given, knobs=knobs, progress=not quiet), log=_note,
                 say=(lambda line: typer.echo(line, err=True)) if as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))


def _convert_signature() -> Signature:
    """ConvertOptions' fields, with one option per method knob (registry + knobs.py) after --out."""
    from ropeconvert.cli_options import Corpus, Text, field_parameters, knob_option, parameter
    from ropeconvert.convert.methods import knobs
    from ropeconvert.convert.options import ConvertOptions

    fields = field_parameters(ConvertOptions)
    at = [p.name for p in fields].index("out") + 1
    knob_params = [parameter(n, alias, False if get_args(alias)[0] is bool else None)
                   for n, alias in ((n, knob_option(n)) for n in knobs.cli_names())]
    return Signature(fields[:at] + knob_params + fields[at:]
                     + [parameter("text", Text, None), parameter("corpus", Corpus, "austen"),
                        parameter("quiet", Quiet, False), parameter("as_json", AsJson, False)])


convert.__signature__ = _convert_signature()  # typer reads the options from the signature
app.command(epilog="Examples:\n\n" + "\n\n".join(CONVERT_EXAMPLES))(convert)


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
        typer.echo(f"{'':<9} HF: {m.hf_text}; GGUF: {m.gguf_text}")
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
            as_json: with_help(AsJson, "Print as JSON.") = False):
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
           quiet: with_help(Quiet, "Only report problems.") = False):
    """Re-check an export: sha256 of every file (HF) or of the whole file (GGUF), rope = the spec it was made from,
    and with --source the weights identical to the source's."""
    from ropeconvert.errors import InputError
    from ropeconvert.formats.inspect import verify as check

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
