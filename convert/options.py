"""What one `ropeconvert MODEL --method M …` run is asked to do: the only declaration of convert's options.

The CLI builds its flags from these fields (ropeconvert/cli.py); `pipeline.convert(opts)` runs convert → validate →
publish from them. Method knobs (--factor, --beta-fast, …) are declared by the methods themselves and arrive in
`knobs` (None = not set).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def cli(help: str | None = None, *decls: str, argument: bool = False, metavar: str | None = None,
        methods: tuple[str, ...] | None = None, flag: bool = True, type: Any = None, parse: Callable | None = None,
        name: str | None = None, minimum: int | None = None, lengths: bool = False) -> dict:
    """Field metadata for a CLI built from an options dataclass (ropeconvert/cli_options.py field_parameters), the
    one form every options dataclass uses: `field(default=…, metadata=cli("help", "-k"))`.
    - `decls`: short forms ("-k"), or the whole declaration ("--truncate/--no-truncate") when not `--field-name`;
    - `methods`: the methods that read the field (None: all); `flag=False`: no option of its own (the CLI derives
      it, e.g. `progress` from --quiet); `name`: the command's parameter when not the field's;
    - `type`/`parse`: the CLI type when the command reads the value as text, and the parser (text → value; None →
      the field's default); `minimum`, `lengths`: what ValidateOptions.check checks."""
    return {"cli": {"help": help, "decls": decls, "argument": argument, "metavar": metavar, "methods": methods,
                    "flag": flag, "type": type, "parse": parse, "name": name, "minimum": minimum, "lengths": lengths}}


@dataclass
class ConvertOptions:
    model: str = field(metadata=cli(
        "Alias (see `ropeconvert methods --models`), Hub id org/name, HF directory or .gguf file.", argument=True))
    method: str
    to: str = field(default="hf", metadata=cli("Export format: hf, gguf or both."))
    out: Path | None = field(default=None, metadata=cli("Output path (default: MODEL-METHOD-NNk[.gguf])."))
    knobs: dict[str, Any] = field(default_factory=dict, metadata=cli(flag=False))  # a flag per knob (the registry)
    original_context: int | None = None
    force: bool = False
    link: bool = field(default=False, metadata=cli("Hard-link weights instead of copying (same filesystem)."))
    replace_scaling: bool = field(default=False, metadata=cli("Replace rope scaling the source already has."))
    stack: bool = field(default=False, metadata=cli(
        "Compose the method on top of the rope scaling the source already has (its target is the new original)."))
    revision: str | None = field(default=None, metadata=cli("Hub revision of the source."))
    progress: bool = field(default=True, metadata=cli(flag=False))  # --quiet
    outtype: str | None = field(default=None, metadata=cli(
        "GGUF tensor type for HF sources: f32, f16 (default), bf16 or q8_0. GGUF sources are copied as they are."))
    static: bool = field(default=False, metadata=cli(
        "GGUF: bake dynamic NTK at the target length (llama.cpp has no dynamic NTK)."))
    base_model: str | None = field(default=None, metadata=cli(
        "The Hub id MODEL is a copy of, recorded for the model card's base_model (a local directory is otherwise "
        "'a local model')."))
    validate: bool = field(default=False, metadata=cli(
        "Then measure base vs extended (ppl, passkey) and write the report."))
    push: str | None = field(default=None, metadata=cli(
        "Then validate and publish to this Hub repo if validation passed (the GGUF of --to both goes to "
        "ORG/NAME-GGUF).", metavar="ORG/NAME"))
    private: bool = field(default=False, metadata=cli("--push: create the Hub repo private."))
    # --method auto, and the searches longrope / dpe run when they come without a file (convert/auto.py,
    # convert/default_search.py)
    candidates: str | None = field(default=None, metadata=cli(
        "--method auto: the methods to measure, comma-separated (default: every method the format carries exactly).",
        metavar="A,B,…"))
    search_budget: int = field(default=16, metadata=cli(
        "Evaluations the default search may spend (longrope without --factors, dpe without a map, and their auto "
        "candidates)."))
    no_search: bool = field(default=False, metadata=cli(
        "Refuse instead of searching when longrope has no --factors (and no catalog entry) or dpe no map."))
    resume: bool = field(default=False, metadata=cli(
        "Continue the default search or --method auto run kept beside the output (<out>.search, <out>.auto)."))
    seed: int = field(default=0, metadata=cli("Seed of the default search and of auto's selection prompts."))
    selection_documents: int = field(default=2, metadata=cli(
        "--method auto: documents scored at the target and original lengths (never the search's)."))
    selection_prompts: int = field(default=4, metadata=cli(
        "--method auto: passkey prompts at the target length (depths spread evenly)."))
    text: str = field(default="austen", metadata=cli(flag=False))  # --text FILE|DIR, else --corpus NAME
    # ropeconvert/fanout.py: --method auto's candidates and the default search's evaluations on Ray workers
    workers: int | None = field(default=None, metadata=cli())
    ray: str | None = field(default=None, metadata=cli())
    gpus_per_worker: float = field(default=1.0, metadata=cli())
