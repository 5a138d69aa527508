"""What `ropeconvert validate` and `--validate` do, kept out of the thin CLI: run with ValidateOptions
(validators/options.py parses the command's flags into them) and print the base-vs-extended table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ropeconvert.validators import report as R
from ropeconvert.validators.options import ValidateOptions
from ropeconvert.validators.validate import validate


def table(report: dict[str, Any]) -> list[str]:
    rows = [("task", "length", "base", "extended"), *R.table_rows(report["tasks"])]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += R.summary_lines(report["tasks"])
    for c in report["checks"]:
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    return lines


def run(export: Path, base: str | None, opts: ValidateOptions) -> tuple[dict[str, Any], Path, list[str]]:
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


def validate_outputs(outputs: dict[str, Path], base: str, quiet: bool, fan=None) -> list[str]:
    """`--validate` on the main command: each fresh export against its source, with the default tasks (fanned
    out like the main command's --workers/--ray, `fan`)."""
    lines = []
    fields = {} if fan is None else {"workers": fan.workers, "ray": fan.ray, "gpus_per_worker": fan.gpus_per_worker}
    for kind, path in outputs.items():
        _, _, table_lines = run(path, base, ValidateOptions(progress=not quiet, **fields))
        lines += [f"validation of the {kind.upper()} export:", *table_lines]
    return lines
