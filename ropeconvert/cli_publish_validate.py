"""`ropeconvert publish` and `ropeconvert validate`: typer signatures over formats/hub.py and validators/command.py
(registered on the app in cli.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

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
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if missing; default main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write the card locally; upload nothing."),
    skip_validation: bool = typer.Option(False, "--skip-validation", help="Publish without a passed validation; the card says so."),
    base_model: Optional[str] = typer.Option(None, "--base-model", metavar="ORG/NAME", help="The Hub id of the base (the card's base_model) when the export was made from a local copy."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
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


def validate(
    export: Path = typer.Argument(..., help="The export: HF directory or .gguf (with --parity: the HF directory)."),
    gguf: Optional[Path] = typer.Argument(None, help="--parity only: the GGUF export to compare with."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (alias, Hub id, path); default: the export's recorded source."),
    tasks: str = typer.Option("ppl,passkey", "--tasks", help="Comma-separated: ppl, passkey, niah, ruler (every offline RULER task) or RULER task names (niah_single_1, vt, cwe, …)."),
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
    seed: int = typer.Option(0, "--seed", help="Seed for passkeys, needles and RULER samples."),
    samples: int = typer.Option(4, "--samples", help="RULER samples per task and length (RULER uses 500)."),
    threshold: str = typer.Option("85.6", "--threshold", help="RULER effective-length threshold (0-100], or 'base': the base's own average at its original context."),
    qa_file: Optional[str] = typer.Option(None, "--qa-file", metavar="FILE[,FILE]", help="SQuAD (qa_1) and/or HotpotQA (qa_2) JSON files for RULER's QA tasks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Measure base vs extended (perplexity, passkey, 4-needle, RULER) and write report.json, PNG plots and report.md."""
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
        quiet=quiet, samples=samples, threshold=threshold, qa_file=qa_file)
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(lines))
