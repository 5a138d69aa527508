"""report.json (schema: validators/report_schema.json), PNG plots and report.md — the evidence the model card reuses.

An HF export keeps its report inside its directory; a GGUF export gets `<name>.report/` beside the file (both:
formats/export.py `report_dir_for`, with the schema ids). Each task renders its own checks and rows. The report
is validated against the schema before anything is written, and written under temporary names then renamed, so a
reader never sees a half-written report.
"""
from __future__ import annotations

import errno
import json
import math
import os
import secrets
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError, OutputError
from ropeconvert.formats.export import REPORT_SCHEMA, REPORT_SCHEMAS, report_dir_for  # noqa: F401  (by name here)
from ropeconvert.validators.report_plots import _pyplot, figures  # noqa: F401  (figures: the report's plots)

SCHEMA_ID = REPORT_SCHEMA  # what validate writes: /1 plus registered tasks (RULER) in "tasks"
SCHEMA_IDS = REPORT_SCHEMAS  # what readers accept: a /1 report is a valid /2 one without them


def schema() -> dict[str, Any]:
    """report_schema.json, plus the record schema of any registered task it does not document (a task added
    after it declares its own `schema`); a task nobody registered is still refused."""
    from ropeconvert.validators.task_registry import all_tasks

    out = json.loads(resources.files("ropeconvert.validators").joinpath("report_schema.json").read_text())
    known = out["properties"]["tasks"]["properties"]
    for task in all_tasks():
        if task.name not in known and getattr(task, "schema", None):
            known[task.name] = task.schema
    return out


def check_schema(report: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validate(report, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InputError(f"report does not follow {SCHEMA_ID} at {where}: {e.message[:160]}") from None


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---- checks -----------------------------------------------------------------------------------------------------
EXTENSION_CHECK = "extension_measured"


def state(report: dict[str, Any]) -> str:
    """passed, failed, or "not validated for the extension" (every check passed, but nothing was measured past the
    original context): its own state, which publishing treats like a missing validation."""
    checks = report.get("checks") or []
    if any(c.get("name") == EXTENSION_CHECK and not c.get("passed") for c in checks) and \
            all(c.get("passed") for c in checks if c.get("name") != EXTENSION_CHECK):
        return "not validated for the extension"
    return "passed" if report.get("passed") else "failed"


def checks(tasks: dict[str, Any], original: int | None) -> list[dict[str, Any]]:
    """The pass/fail rules documented in report_schema.json: each task's own (validators/task_registry.py), then
    whether anything was measured past the original context, then the carried-over tasks' (parity)."""
    from ropeconvert.validators.task_registry import check, in_report

    orig = original or 0
    present = in_report(tasks)
    out = [c for task, record in present if not task.carried for c in task.checks(record, orig)]
    measured = sorted({n for t in tasks.values() if isinstance(t, dict) for n in t.get("lengths") or []})
    if measured and orig:  # every measurement inside the trained length proves nothing about the extension
        far = [n for n in measured if n > orig]
        out.append(check(EXTENSION_CHECK, bool(far), f"lengths past the original {orig}: {far}" if far else
                         f"no length past the original context {orig} was measured ({measured}): the extension "
                         f"is untested"))
    return out + [c for task, record in present if task.carried for c in task.checks(record, orig)]


# ---- markdown ---------------------------------------------------------------------------------------------------
def table_rows(tasks: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(task, length, base, extended) rows: the side-by-side table printed by the CLI and written to report.md."""
    from ropeconvert.validators.task_registry import in_report

    return [row for task, record in in_report(tasks) for row in task.rows(record)]


def summary_lines(tasks: dict[str, Any]) -> list[str]:
    """The tasks' headline lines (RULER: the effective lengths)."""
    from ropeconvert.validators.task_registry import in_report

    return [line for task, record in in_report(tasks) for line in task.summary(record)]


def markdown(report: dict[str, Any]) -> str:
    rt = report["runtime"]
    lines = ["## Validation (ropeconvert)", "",
             f"Base `{report['base']}` vs extended `{Path(report['export']).name}`, measured on "
             f"{rt.get('engine', 'transformers')} ({rt['device']}, {rt['dtype']}) with the {report['corpus']['name']} "
             f"corpus ({len(report['corpus']['documents'])} documents), {report['created']}.", "",
             *[x for line in summary_lines(report["tasks"]) for x in (line, "")],
             "| task | length | base | extended |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(report["tasks"])]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |" for c in report["checks"]]
    if report.get("selection"):
        from ropeconvert.convert.auto_report import markdown as selection

        lines += ["", "### How the method was chosen", "", selection(report["selection"])]
    lines += ["", f"Overall: **{state(report)}**."]
    for name, file in report["plots"].items():
        lines += ["", f"![{name}]({file})"]
    return "\n".join(lines) + "\n"


# ---- writing ----------------------------------------------------------------------------------------------------
def write(report: dict[str, Any], out_dir: Path, figs: dict[str, Any]) -> Path:
    """Validate, then write the plots, report.md and report.json (last, so its presence means complete)."""
    report = dict(report, plots={name: f"{name}.png" for name in figs}, markdown="report.md")
    report["tasks"] = _finite(report["tasks"])  # JSON has no NaN/inf: null, and the ppl_finite check says why
    report["checks"] = report.get("checks") or []
    report["passed"] = bool(report["checks"]) and all(c["passed"] for c in report["checks"])
    report["state"] = state(report)
    check_schema(report)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    plt = _pyplot()
    staged: list[tuple[Path, Path]] = []  # (temporary, final): every file is complete before any is renamed
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            staged.append((out_dir / f".{name}.png.{tag}.tmp", out_dir / f"{name}.png"))
            fig.savefig(staged[-1][0], format="png")
        for name, text in (("report.md", markdown(report)),
                           ("report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")):
            staged.append((out_dir / f".{name}.{tag}.tmp", out_dir / name))
            _write_file(staged[-1][0], text.encode("utf-8"))
        for tmp, final in staged:  # report.json last, so its presence means complete
            os.replace(tmp, final)
    except OSError as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if created:
            _remove_empty(out_dir)
        raise _write_error(e, out_dir) from None
    finally:
        for fig in figs.values():
            plt.close(fig)
    return out_dir / "report.json"


def check_writable(out_dir: Path) -> None:
    """Refuse before any measuring when the report could not be written there."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot write the validation report: {out_dir} exists and is not a directory",
                          "move it away, then rerun validate")
    where = out_dir if out_dir.exists() else out_dir.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the validation report into {where} (permission denied or read-only)",
                          "make it writable, or validate a copy of the export in a writable place")


def _write_error(e: OSError, out_dir: Path) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"ran out of space writing the validation report in {out_dir} (the previous report, if "
                           "any, is unchanged)", "free some space, then rerun validate")
    return OutputError(f"cannot write the validation report in {out_dir} ({e.strerror or type(e).__name__})",
                       "make it writable, or validate a copy of the export in a writable place")


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
