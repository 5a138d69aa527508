"""What one `ropeconvert validate` run is asked to do: the only declaration of validate's options.

`ValidateOptions` is what `validate()` takes (`validate.Options` is the same class); the typer command is built
from its fields and from `CommandInputs` (what only the command has: the paths, --base, --parity, --json), with the
flags shared by several commands taken from ropeconvert/cli_options.py by field name. A field's metadata holds its
help, its CLI type when the command reads it as text (a comma-separated list) and the parser that turns that text
into the field's value. Each task reads its own fields (passkey: depths, trials; RULER: samples, threshold, …).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ropeconvert.convert.options import cli
from ropeconvert.errors import InputError

DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
ENGINES = ("native", "vllm")
SCORED_TASKS = ("ppl", "parity")  # measured from log-probabilities, which --engine vllm does not give
MIN_LENGTH = 16


def parse_list(label: str, text: str | None, kind: Callable = int) -> tuple | None:
    """'4096,8192' / '4k,8k' → (4096, 8192); one line naming the option when malformed."""
    if text is None:
        return None
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = kind(float(part[:-1]) * 1024) if kind is int and part[-1:].lower() == "k" else kind(part)
        except (ValueError, IndexError, OverflowError):  # OverflowError: "1e400k" is inf tokens
            raise InputError(f"{label}: {part!r} is not a valid {'integer' if kind is int else 'number'}",
                             f"give a comma-separated list, e.g. {label} {'4096,8192' if kind is int else '0.1,0.5,0.9'}") from None
        if kind is int and value <= 0:
            raise InputError(f"{label}: lengths must be positive, got {part}", f"e.g. {label} 4096,8192")
        out.append(value)
    if not out:
        raise InputError(f"{label} is empty")
    return tuple(out)


def _names(label: str, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names and label == "--tasks":
        raise InputError("--tasks is empty", "e.g. --tasks ppl,passkey,niah or --tasks ruler")
    return names


def _ints(label: str) -> Callable:
    return lambda text: parse_list(label, text)


@dataclass
class ValidateOptions:
    tasks: tuple[str, ...] = field(default=("ppl", "passkey"), metadata=cli(
        "Comma-separated: ppl, passkey, niah, ruler (every offline RULER task) or RULER task names (niah_single_1, "
        "vt, cwe, …).", type=str, parse=lambda t: _names("--tasks", t)))
    lengths: tuple[int, ...] | None = field(default=None, metadata=cli(  # default: original/2, original, target
        "Token lengths, e.g. 4096,8192,16384 (default: original/2, original, target).", type=Optional[str],
        parse=_ints("--lengths"), lengths=True))
    passkey_lengths: tuple[int, ...] | None = field(default=None, metadata=cli(
        "Passkey lengths (default: --lengths).", type=Optional[str], parse=_ints("--passkey-lengths"), lengths=True))
    niah_lengths: tuple[int, ...] | None = field(default=None, metadata=cli(
        "4-needle lengths (default: --lengths).", type=Optional[str], parse=_ints("--niah-lengths"), lengths=True))
    depths: tuple[float, ...] = field(default=DEFAULT_DEPTHS, metadata=cli(
        "Passkey depths in [0, 1] (default 0.1,0.5,0.9).", type=Optional[str],
        parse=lambda t: parse_list("--depths", t, float)))
    trials: int = field(default=2, metadata=cli("Passkey trials per (length, depth) cell.", minimum=1))
    niah_samples: int = field(default=2, metadata=cli("4-needle samples per length.", minimum=1))
    documents: int = field(default=2, metadata=cli("Perplexity documents.", minimum=1))
    text: Path | None = field(default=None, metadata=cli("Your own text: a .txt file or a directory of them."))
    corpus: str = field(default="austen", metadata=cli())  # a corpus name (or, from the API, a text path)
    dataset: str | None = field(default=None, metadata=cli(
        "Hub dataset instead (online): pg19, proof-pile or ORG/NAME[:GLOB]."))
    truncate: bool = field(default=True, metadata=cli(
        "One window per document, or slide with --stride.", "--truncate/--sliding"))
    stride: int = field(default=256, metadata=cli("--sliding: tokens between windows.", minimum=1))
    max_windows: int = field(default=10, metadata=cli("--sliding: windows per document at most.", minimum=1))
    tokens: int | None = field(default=None, metadata=cli("--parity: sequence length (default original + 1024)."))
    device: str | None = field(default=None, metadata=cli())
    seed: int = field(default=0, metadata=cli("Seed for passkeys, needles and RULER samples."))
    samples: int = field(default=4, metadata=cli("RULER samples per task and length (RULER uses 500)."))
    threshold: str = field(default="85.6", metadata=cli(
        "RULER effective-length threshold (0-100], or 'base': the base's own average at its original context."))
    qa_files: tuple[str, ...] = field(default=(), metadata=cli(
        "SQuAD (qa_1) and/or HotpotQA (qa_2) JSON files for RULER's QA tasks.", "--qa-file", type=Optional[str],
        metavar="FILE[,FILE]", name="qa_file", parse=lambda t: _names("--qa-file", t)))
    progress: bool = field(default=True, metadata=cli(  # the command's --quiet
        type=bool, name="quiet", parse=lambda quiet: None if quiet is None else not quiet))
    notes: list[str] = field(default_factory=list, metadata=cli(flag=False))
    engine: str = field(default="native", metadata=cli(
        "Generation engine: native (transformers for an HF export, llama.cpp for a GGUF) or vllm (an HF export on a "
        "CUDA GPU, through vLLM's offline LLM; the generation tasks only: ruler, passkey, niah)."))
    # ropeconvert/fanout.py: validation cells (task × length × side) on Ray workers
    workers: int | None = field(default=None, metadata=cli())
    ray: str | None = field(default=None, metadata=cli())
    gpus_per_worker: float = field(default=1.0, metadata=cli())

    def check(self) -> None:
        """Refuse, in one line, what no task can measure; then each chosen task checks its own options."""
        from ropeconvert.validators import task_registry

        task_registry.check_names(self.tasks)
        from ropeconvert.fanout import Workers

        Workers.of(self).check()  # --workers without Ray: one line before anything loads
        if self.engine not in ENGINES:
            raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}", "e.g. --engine vllm")
        scored = [t.name for t, _ in self.registered().values() if t.name in SCORED_TASKS]
        if self.engine == "vllm" and scored:
            raise InputError(f"--engine vllm generates text; {', '.join(scored)} needs the model's log-probabilities "
                             "(transformers or llama.cpp)", "drop them from --tasks, or drop --engine vllm")
        if self.text is not None and not Path(self.text).exists():
            raise InputError(f"--text {self.text} does not exist", "pass a .txt file or a directory of .txt files")
        for f in dataclasses.fields(self):
            meta, value = f.metadata["cli"], getattr(self, f.name)
            if meta["lengths"] and value is not None and (not value or any(v < MIN_LENGTH for v in value)):
                raise InputError(f"{flag_of(f)} must be token counts ≥ {MIN_LENGTH}, got {list(value)}",
                                 "e.g. --lengths 4096,8192,16384")
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise InputError(f"{flag_of(f)} must be ≥ {meta['minimum']}, got {value}")
        if any(not 0 <= d <= 1 for d in self.depths) or not self.depths:
            raise InputError(f"--depths must lie in [0, 1], got {list(self.depths)}", "e.g. --depths 0.1,0.5,0.9")
        for task, selectors in self.registered().values():
            task.check(self, selectors)

    def registered(self) -> dict[str, tuple[Any, tuple[str, ...]]]:
        """The tasks asked for: {report key: (task, the --tasks names that chose it)}."""
        from ropeconvert.validators import task_registry

        return task_registry.chosen(self.tasks)

    def check_limit(self, limit: int, what: str) -> None:
        """Refuse any length past `limit` before anything is measured: the export promises nothing there, and a
        50M-token prompt would only end in the tokenizer's panic."""
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if f.metadata["cli"]["lengths"] and values is not None and max(values) > limit:
                label = flag_of(f)
                raise InputError(f"{label} {max(values)} is longer than {what} ({limit} tokens)",
                                 f"measure at most {limit} tokens, e.g. {label} {max(16, limit // 2)},{limit}")


@dataclass
class CommandInputs:
    """What only the command has (the API passes them to `validate()` / `parity()` as arguments)."""

    export: Path = field(metadata=cli("The export: HF directory or .gguf (with --parity: the HF directory).",
                                      argument=True))
    gguf: Path | None = field(default=None, metadata=cli("--parity only: the GGUF export to compare with.",
                                                         argument=True))
    base: str | None = field(default=None, metadata=cli(
        "Base model (alias, Hub id, path); default: the export's recorded source."))
    parity: bool = field(default=False, metadata=cli("Compare an HF export (transformers) with a GGUF (llama.cpp)."))
    as_json: bool = field(default=False, metadata=cli("Print the report as JSON."))


def flag_of(f: dataclasses.Field) -> str:
    meta = f.metadata["cli"]
    return meta["decls"][0].split("/")[0] if meta["decls"] else "--" + f.name.replace("_", "-")


def cli_parameters() -> list[inspect.Parameter]:
    """The typer parameters of `ropeconvert validate`: CommandInputs then ValidateOptions, one per field; a field
    whose name is a shared alias (quiet, device, seed, text, corpus, documents, samples, lengths, as_json …) takes
    the alias (with this command's help when the field gives one)."""
    from ropeconvert.cli_options import field_parameters

    return field_parameters(CommandInputs) + field_parameters(ValidateOptions)


def cli_signature() -> inspect.Signature:
    return inspect.Signature(cli_parameters())


def from_cli(values: dict[str, Any]) -> tuple[CommandInputs, ValidateOptions]:
    """The command's parameter values → (its inputs, the options): list flags parsed, unset ones defaulted."""
    inputs = CommandInputs(**{f.name: values[f.name] for f in dataclasses.fields(CommandInputs)})
    kwargs = {}
    for f in dataclasses.fields(ValidateOptions):
        meta = f.metadata["cli"]
        if not meta["flag"]:
            continue
        value = values[meta["name"] or f.name]
        if meta["parse"] is not None:
            value = meta["parse"](value)
            if value is None:
                continue
        kwargs[f.name] = value
    return inputs, ValidateOptions(**kwargs)
