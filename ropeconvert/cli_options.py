"""Shared typed CLI options, declared once (huggingface_hub `cli/_cli_utils.py` style), and the builder that turns
an options dataclass into a typer signature.

A flag used by more than one command is one alias here; a command whose flag means something narrower gives it
its own help with `with_help(Alias, "…")` (same name, short form and type). A flag of one command only is declared
by its options dataclass field (convert/options.py `cli(help=…)` metadata) or, for method knobs, by
convert/methods/knobs.py.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from copy import copy
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when available).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the random choices (needles, pass keys, samples).")]
Text = Annotated[Optional[Path], typer.Option("--text", help="Your own text: a .txt file or a directory of them.")]
Corpus = Annotated[str, typer.Option("--corpus", help="Offline corpus: austen or shakespeare.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the work an interrupted run left.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hub revision: branch, tag or commit.")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output path.")]
Method = Annotated[str, typer.Option("--method", "-m", help="Extension method (see `ropeconvert methods`).")]
OriginalContext = Annotated[Optional[int], typer.Option("--original-context",
                                                        help="Override the trained length from the config.")]
Private = Annotated[bool, typer.Option("--private", help="Create the Hub repository private.")]
BaseModel = Annotated[Optional[str], typer.Option(
    "--base-model", metavar="ORG/NAME",
    help="The Hub id of the base (the model card's base_model) when the model is a local copy.")]
Documents = Annotated[int, typer.Option("--documents", help="Documents of the corpus to measure on.")]
Samples = Annotated[int, typer.Option("--samples", help="Samples per measurement.")]
Lengths = Annotated[Optional[str], typer.Option("--lengths", help="Comma-separated token lengths.")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", help="Fan the evaluations out to N Ray workers, each holding the model (needs the ray extra).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray", metavar="ADDRESS", help="Join a running Ray cluster (`ray start --head`) instead of a local one.")]
GpusPerWorker = Annotated[float, typer.Option(
    "--gpus-per-worker", help="GPUs per Ray worker, for a model that needs several (default 1).")]

# field name → alias: an options dataclass field of this name takes its flag from here
SHARED: dict[str, Any] = {
    "quiet": Quiet, "as_json": AsJson, "device": Device, "seed": Seed, "text": Text, "corpus": Corpus,
    "force": Force, "resume": Resume, "revision": Revision, "out": Out, "method": Method, "original_context": OriginalContext,
    "private": Private, "base_model": BaseModel, "documents": Documents, "samples": Samples, "lengths": Lengths,
    "workers": Workers, "ray": RayAddress, "gpus_per_worker": GpusPerWorker,
}


def with_help(alias: Any, help: str | None, *shorts: str) -> Any:
    """The same option (name, type) with help text, and maybe a short form, for one command."""
    base, info = typing.get_args(alias)
    info = copy(info)
    info.help = help or info.help
    # in Annotated form typer keeps the first declaration in `default`
    decls = (info.default, *(info.param_decls or ())) if isinstance(info.default, str) else (*(info.param_decls or ()),)
    info.default, info.param_decls = decls[0], (*decls[1:], *shorts)
    return Annotated[base, info]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_type(annotation: Any) -> Any:
    """A CLI type typer understands for a field annotation: `X | None` → Optional[X]; a union of several forms
    (`str | Path | Sequence[float]`) → Path when it takes a path, else its first scalar."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    scalars = [a for a in args if a in (bool, int, float, str, Path)]
    optional = type(None) in args
    if not scalars:
        return None  # not a CLI value (e.g. an array): the API takes it, the CLI does not
    chosen = Path if Path in scalars else scalars[0]
    return Optional[chosen] if optional else chosen


def parameter(name: str, alias: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias, default=default)


def field_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One typer parameter per CLI field of an options dataclass (metadata: convert/options.py `cli`), in field
    order: the flag from SHARED or the method knobs where the field's name is one, else its declarations or
    `--field-name`; help from the field's metadata."""
    from ropeconvert.convert.methods import knobs

    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli", {})
        name = meta.get("name") or f.name
        if f.name in skip or not meta.get("flag", True):
            continue
        help, decls = meta.get("help"), tuple(meta.get("decls") or ())
        kind = meta.get("type") or cli_type(hints[f.name])
        if meta.get("argument"):
            alias = Annotated[kind, typer.Argument(help=help)]
        elif name in SHARED or name in knobs.KNOBS:
            alias = with_help(SHARED[name] if name in SHARED else knob_option(name), help, *decls)
        else:
            if not any(d.startswith("--") for d in decls):
                decls = (flag(name), *decls)
            alias = Annotated[kind, typer.Option(*decls, help=help, metavar=meta.get("metavar"))]
        params.append(parameter(name, alias, _default(f, meta)))
    return params


def _default(f: dataclasses.Field, meta: dict) -> Any:
    if meta.get("parse") is not None:  # read as text and parsed: unset means the field's own default
        return False if meta.get("type") is bool else None
    return f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty


def knob_option(name: str) -> Any:
    """The option of a method knob (convert/methods/knobs.py + the registry): type from the methods' annotations,
    always optional (unset = the method's own default), help prefixed with the methods that take it."""
    from ropeconvert.convert.methods import knobs

    k = knobs.knob(name)
    kind = cli_type(knobs.annotation_of(name))
    kind = bool if kind in (bool, Optional[bool]) else Optional[kind]  # a bool knob is a flag: absent = unset
    return Annotated[kind, typer.Option(flag(name), *k.shorts, help=knobs.help_of(name))]
