"""What `ropeconvert validate` and `--validate` do, kept out of the thin CLI: parse the list options, run, and
print the base-vs-extended table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ropeconvert.errors import InputError
from ropeconvert.validators import report as R
from ropeconvert.validators.validate import Options, validate


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


def table(report: dict[str, Any]) -> list[str]:
    rows = [("task", "length", "base", "extended"), *R.table_rows(report["tasks"])]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += R.summary_lines(report["tasks"])
    for c in report["checks"]:
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    return lines


def run(export: Path, base: str | None, *, tasks: str, lengths: str | None, passkey_lengths: str | None,
        niah_lengths: str | None, depths: str | None, trials: int, niah_samples: int, documents: int,
        text: Path | None, corpus: str, dataset: str | None, truncate: bool, stride: int, max_windows: int,
        device: str | None, seed: int, quiet: bool, samples: int = Options.samples,
        threshold: str = Options.threshold, qa_file: str | None = None) -> tuple[dict[str, Any], Path, list[str]]:
    if text is not None and not Path(text).exists():
        raise InputError(f"--text {text} does not exist", "pass a .txt file or a directory of .txt files")
    opts = Options(
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), lengths=parse_list("--lengths", lengths),
        passkey_lengths=parse_list("--passkey-lengths", passkey_lengths),
        niah_lengths=parse_list("--niah-lengths", niah_lengths),
        depths=parse_list("--depths", depths, float) or Options.depths, trials=trials, niah_samples=niah_samples,
        documents=documents, corpus=str(text) if text is not None else corpus, dataset=dataset, truncate=truncate,
        stride=stride, max_windows=max_windows, device=device, seed=seed, samples=samples, threshold=threshold,
        qa_files=tuple(f.strip() for f in (qa_file or "").split(",") if f.strip()), progress=not quiet)
    if not opts.tasks:
        raise InputError("--tasks is empty", "e.g. --tasks ppl,passkey,niah or --tasks ruler")
    report, path = validate(Path(export), base, opts)
    verdict = {"passed": "passed", "failed": "FAILED"}.get(R.state(report), "NOT VALIDATED FOR THE EXTENSION")
    lines = table(report) + [f"{verdict}: wrote {path} and {len(report['plots'])} plots"]
    return report, path, lines


def parity_lines(result: dict[str, Any], path: Path) -> list[str]:
    return [f"tokens            {result['tokens']}",
            f"perplexity HF     {result['ppl_hf']:.4f}  (transformers)",
            f"perplexity GGUF   {result['ppl_gguf']:.4f}  (llama.cpp)",
            f"ratio GGUF/HF     {result['ratio']:.4f}",
            f"top-1 agreement   {result['top1_agreement']:.2%}",
            f"max |ΔNLL|        {result['max_abs_nll_diff']:.4f}",
            f"wrote {path}"]


def validate_outputs(outputs: dict[str, Path], base: str, quiet: bool) -> list[str]:
    """`--validate` on the main command: each fresh export against its source, with the default tasks."""
    lines = []
    for kind, path in outputs.items():
        report, out, table_lines = run(path, base, tasks="ppl,passkey", lengths=None, passkey_lengths=None,
                                       niah_lengths=None, depths=None, trials=Options.trials,
                                       niah_samples=Options.niah_samples, documents=Options.documents, text=None,
                                       corpus=Options.corpus, dataset=None, truncate=True, stride=Options.stride,
                                       max_windows=Options.max_windows, device=None, seed=0, quiet=quiet)
        lines += [f"validation of the {kind.upper()} export:", *table_lines]
    return lines
