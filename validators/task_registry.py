"""Validation tasks as registered objects (lm-evaluation-harness style): each task says how it is measured on one
runtime, what it records in report["tasks"][name], its pass/fail checks, its figure, its table rows and its model
card section, beside its measurement (ppl_task.py beside perplexity.py, …). `validate()` loops over the tasks asked
for; report.py, report_plots.py and the model card render any registered task's record without knowing its name,
in registration order (BUILTIN's, then any registered later).

A task answers to one or more selectors (`--tasks` names): RULER answers to "ruler" and to each of its task names.
A `carried` task is measured elsewhere (parity: `ropeconvert validate --parity HF_DIR GGUF`); validate keeps the
record a previous report of the same export holds, and its checks follow the extension check.
A new task is one module that calls `register(MyTask())` at import, one line in BUILTIN, and its tests.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ropeconvert.errors import UnknownNameError
from ropeconvert.registry import Registry

# the modules that register a task when imported (one line per task module); this order is the report's order
BUILTIN = ("ropeconvert.validators.ppl_task", "ropeconvert.validators.passkey_task",
           "ropeconvert.validators.niah_task", "ropeconvert.validators.parity_task",
           "ropeconvert.validators.ruler_task")


@dataclass
class TaskContext:
    """What a task may use to prepare its prompts, before any model is measured."""

    selectors: tuple[str, ...]  # the --tasks names that chose this task
    options: Any  # ValidateOptions (the task reads its own fields: samples, threshold, …)
    lengths: tuple[int, ...]  # the lengths of the sweep (--lengths, or original/2, original, target)
    tokenizer: Any  # the extended model's tokenizer (HF, or llama.cpp's through GgufRuntime)
    original: int  # the base's trained context
    target: int | None  # the export's target context
    documents: list = field(default_factory=list)  # the corpus documents (validators/corpus.Document)
    corpus_name: str = "austen"
    bos: bool = True  # the extended model's tokenizer has a BOS token


class Task(Protocol):
    name: str  # its key in report["tasks"] and its plot's name
    title: str  # its plot's title on the card
    higher_is_better: bool
    selectors: tuple[str, ...]  # the --tasks names it answers to
    carried: bool  # measured elsewhere; validate carries a previous record of the same export over
    schema: dict | None  # its record's JSON schema, when report_schema.json does not document it

    def check(self, options: Any, selectors: tuple[str, ...]) -> None:
        """Refuse bad task options (one line) before anything is loaded."""

    def prepare(self, ctx: TaskContext) -> Any:
        """Build every prompt (same for base and extended); refuse bad input here, before any measuring. A result
        with a `documents` attribute names the corpus documents the report lists."""

    def run(self, runtime, prepared: Any, label: str, progress: bool) -> Any:
        """Measure one side (one runtime)."""

    def blank(self, result: Any) -> Any:
        """A result shaped like `result` with nothing measured (that side's llama.cpp crashed)."""

    def record(self, prepared: Any, base: Any, extended: Any) -> dict[str, Any]:
        """report["tasks"][name]: base and extended side by side (JSON only)."""

    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        """{"name", "passed", "detail"} dicts (names stable, documented in report_schema.json)."""

    def figure(self, record: dict[str, Any], original: int | None, target: int | None):
        """A matplotlib figure (or None)."""

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        """(task, length, base, extended) rows for the console and report.md table."""

    def summary(self, record: dict[str, Any]) -> list[str]:
        """Headline lines (console, report.md; the first on the card)."""

    def card(self, record: dict[str, Any]) -> str:
        """The task's model card section (markdown), or ""."""


class TaskDefaults:
    """What most tasks share: measured by validate, no headline, no figure, no card section."""

    carried = False
    schema = None

    def check(self, options: Any, selectors: tuple[str, ...]) -> None:
        pass

    def figure(self, record, original, target):
        return None

    def summary(self, record: dict[str, Any]) -> list[str]:
        return []

    def card(self, record: dict[str, Any]) -> str:
        return ""


TASKS: Registry[Task] = Registry("validation task")  # selector → task (a task under each of its selectors)
NAMES: Registry[Task] = Registry("validation task")  # report key → task (every task, selectors or not)
_loaded = False


def register(task: Task) -> Task:
    """Register `task` under its name and each of its selectors (a duplicate is a ValueError)."""
    if task.name in NAMES or any(s in TASKS for s in task.selectors):
        raise ValueError(f"validation task {task.name!r} (or one of its selectors) is already registered")
    NAMES.register(task.name, task)
    for selector in task.selectors:
        TASKS.register(selector, task)
    return task


@contextlib.contextmanager
def registered(task: Task):
    """`task` registered for the duration of the block (a test's made-up task), then unregistered again."""
    _load()
    register(task)
    try:
        yield task
    finally:
        NAMES.unregister(task.name)
        for selector in task.selectors:
            TASKS.unregister(selector)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:  # not frozen afterwards: `registered` adds a test's task for one block
            importlib.import_module(module)


def selectors() -> list[str]:
    _load()
    return list(TASKS)


def all_tasks() -> list[Task]:
    """Every registered task, in registration order (the order of the report's table, checks, plots and card)."""
    _load()
    order = {module: i for i, module in enumerate(BUILTIN)}  # not import order: a module may be imported first
    return sorted((task for _, task in NAMES.items()), key=lambda t: order.get(type(t).__module__, len(BUILTIN)))


def by_name(name: str) -> Task | None:
    """The registered task whose report key is `name` (None if there is none)."""
    _load()
    return NAMES.get(name) if name in NAMES else None


def check_names(names: tuple[str, ...]) -> None:
    """An unknown --tasks name → one line with "did you mean" and the names there are."""
    _load()
    for n in names:
        if n not in TASKS:
            many = [f"{t.selectors[0]} or its tasks ({', '.join(t.selectors[1:4])}, …)" if len(t.selectors) > 2
                    else t.selectors[0] for t in all_tasks() if t.selectors and not t.carried]
            raise UnknownNameError(TASKS.unknown_message(n), f"choose from: {', '.join(many)}")


def chosen(names: tuple[str, ...]) -> dict[str, tuple[Task, tuple[str, ...]]]:
    """{report key: (task, the selectors that chose it)} for the registered names among `names`, in registration
    order."""
    _load()
    picked: dict[str, tuple[str, ...]] = {}
    for n in names:
        if n in TASKS:
            prev = picked.get(TASKS.get(n).name, ())
            picked[TASKS.get(n).name] = prev + ((n,) if n not in prev else ())
    return {t.name: (t, picked[t.name]) for t in all_tasks() if t.name in picked}


def in_report(tasks: dict[str, Any]) -> list[tuple[Task, dict[str, Any]]]:
    """(task, record) for every registered task with a record in report["tasks"], in registration order."""
    return [(t, tasks[t.name]) for t in all_tasks() if isinstance(tasks.get(t.name), dict)]


# ---- what the tasks' checks and rows share -------------------------------------------------------------------
def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def not_worse(name: str, rows: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    """An accuracy past the original context: passes when no length is worse than the base and one is better
    (or every one is perfect) — equal everywhere is no evidence the extension works."""
    if not rows:
        return []
    worse = [n for n, b, e in rows if e < b]
    gained = any(e > b for _, b, e in rows) or all(e == 1.0 for _, _, e in rows)
    detail = "; ".join(f"{n}: {e:.0%} vs base {b:.0%}" for n, b, e in rows)
    if not worse and not gained:
        detail += " (no length improves on the base)"
    return [check(name, not worse and gained, detail)]


def side_by_side(record: dict[str, Any], *keys: str):
    """zip(lengths, base, extended) of a record, short columns padded with None (the card never breaks)."""
    lengths = record.get(keys[0]) or []
    cols = [list(record.get(k) or []) + [None] * len(lengths) for k in keys[1:]]
    return zip(lengths, *cols)


def length_rows(metric: str, record: dict[str, Any], fmt) -> list[tuple[str, str, str, str]]:
    """The report's rows of a task with one base and one extended value per length."""
    return [(metric, str(n), fmt(b), fmt(e)) for n, b, e in zip(record["lengths"], record["base"], record["extended"])]


def length_card(title: str, record: dict[str, Any], fmt) -> str:
    """The card's section of a task with one base and one extended value per length."""
    rows = [[count(n), fmt(b), fmt(e)] for n, b, e in side_by_side(record, "lengths", "base", "extended")]
    return f"### {title}\n\n" + table(["length", "base", "extended"], rows)


def table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table (the card's)."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def count(v) -> str:
    return "—" if v is None else f"{int(v):,}"


def card_pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def card_float(v, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"
