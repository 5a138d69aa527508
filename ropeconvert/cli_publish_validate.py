"""`ropeconvert publish` and `ropeconvert validate`: typer signatures over formats/hub.py and validators/command.py
(registered on the app in cli.py)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ropeconvert.cli_options import AsJson, BaseModel, Private, Quiet, Revision, with_help

try:  # typer ≥ 0.24 vendors click; older releases use the click package itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc


def note(message: str) -> None:
    typer.echo(f"note: {message}", err=True)


PUBLISH_EXAMPLES = [
    "ropeconvert publish smollm2-135m-yarn-16k --repo my-org/smollm2-135m-yarn-16k --dry-run",
    "ropeconvert publish smollm2-135m-yarn-16k.gguf --repo my-org/smollm2-135m-yarn-16k-GGUF --private",
]


VALIDATE_EXAMPLES = [
    "ropeconvert validate smollm2-135m-yarn-16k --base smollm2-135m --tasks ppl,passkey --lengths 4096,8192,16384",
    "ropeconvert validate out.gguf --base model.gguf --tasks ppl --text my_books/",
    "ropeconvert validate smollm2-135m-yarn-16k --tasks ruler --lengths 4096,8192,16384 --samples 20",
    "ropeconvert validate --parity smollm2-135m-yarn-16k smollm2-135m-yarn-16k.gguf",
]


def publish(
    export: Path = typer.Argument(..., help="An export written by ropeconvert: HF directory or .gguf file."),
    repo: str = typer.Option(..., "--repo", metavar="ORG/NAME", help="Hub repository (created if missing)."),
    private: with_help(Private, "Create the repository private.") = False,
    revision: with_help(Revision, "Branch to commit to (created if missing; default main).") = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write the card locally; upload nothing."),
    skip_validation: bool = typer.Option(False, "--skip-validation", help="Publish without a passed validation; the card says so."),
    base_model: with_help(BaseModel, "The Hub id of the base (the card's base_model) when the export was made from a local copy.") = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
):
    """Publish an export to the Hugging Face Hub in one commit, with a model card built from its validation report.

    The token comes from HF_TOKEN or `hf auth login` and is never printed or written anywhere."""
    from ropeconvert.formats.hub import publish as run

    result = run(export, repo, private=private, revision=revision, dry_run=dry_run, skip_validation=skip_validation,
                 progress=not quiet, log=note, base_model=base_model)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for line in result.lines():
        typer.echo(line)


def validate(**values):
    """Measure base vs extended (perplexity, passkey, 4-needle, RULER) and write report.json, PNG plots and report.md."""
    from ropeconvert.validators import command
    from ropeconvert.validators.options import from_cli

    cmd, opts = from_cli(values)  # the flags are ValidateOptions' fields (validators/options.py), built below
    if cmd.parity or cmd.gguf is not None:
        if not (cmd.parity and cmd.gguf is not None):
            raise click_exc.UsageError("a second path needs --parity, and --parity needs HF_DIR and GGUF")
        from ropeconvert.validators.parity import parity as run_parity

        result, path = run_parity(cmd.export, cmd.gguf, tokens=opts.tokens,
                                  corpus=str(opts.text) if opts.text else opts.corpus, device=opts.device)
        typer.echo(json.dumps(result, indent=2) if cmd.as_json else "\n".join(command.parity_lines(result, path)))
        return
    report, path, lines = command.run(cmd.export, cmd.base, opts)
    typer.echo(json.dumps(report, indent=2) if cmd.as_json else "\n".join(lines))


from ropeconvert.validators.options import cli_signature  # noqa: E402  (light: dataclasses and typer only)

validate.__signature__ = cli_signature()  # typer reads validate's flags from ValidateOptions' fields
