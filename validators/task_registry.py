"""Validation tasks as registered objects (lm-evaluation-harness style): each task says how it is measured on one
runtime, what it records in report["tasks"][name], its pass/fail checks, its figure, its table rows and its model
card section, beside its measurement. `validate()` loops over the tasks asked for; report.py, report_plots.py and
the model card render any registered task's record without knowing its name.

A task answers to one or more selectors (`--tasks` names): RULER answers to "ruler" and to each of its task names.
ppl, passkey and niah still run through validate.py's own code path (they are not registered here yet).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ropeconvert.registry import Registry

# the modules that register a task when imported (one line per task module)
BUILTIN = ("ropeconvert.validators.ruler_task",)


@dataclass
class TaskContext:
    """What a task may use to prepare its prompts, before any model is measured."""

    selectors: tuple[str, ...]  # the --tasks names that chose this task
    options: Any  # validate.Options (the task reads its own fields: samples, threshold, …)
    lengths: tuple[int, ...]  # the lengths of the sweep (--lengths, or original/2, original, target)
    tokenizer: Any  # the extended model's tokenizer (HF, or llama.cpp's through GgufRuntime)
    original: int  # the base's trained context
    target: int | None  # the export's target context
    documents: list = field(default_factory=list)  # the corpus documents (validators/corpus.Document)
    corpus_name: str = "austen"


class Task(Protocol):
    name: str  # its key in report["tasks"] and its plot's name
    title: str  # its plot's title on the card
    higher_is_better: bool
    selectors: tuple[str, ...]  # the --tasks names it answers to

    def check(self, options: Any, selectors: tuple[str, ...]) -> None:
        """Refuse bad task options (one line) before anything is loaded."""

    def prepare(self, ctx: TaskContext) -> Any:
        """Build every prompt (same for base and extended); refuse bad input here, before any measuring."""

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
        """Headline lines (console, report.md, card)."""

    def card(self, record: dict[str, Any]) -> str:
        """The task's model card section (markdown)."""


TASKS: Registry[Task] = Registry("validation task")  # selector → task (a task under each of its selectors)
_loaded = False


def register(task: Task) -> Task:
    """Register `task` under each of its selectors (a duplicate selector is a ValueError)."""
    for selector in task.selectors:
        TASKS.register(selector, task)
    return task


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
        TASKS.freeze()


def selectors() -> list[str]:
    _load()
    return list(TASKS)


def by_name(name: str) -> Task | None:
    """The registered task whose report key is `name` (None for ppl/passkey/niah/parity)."""
    _load()
    for _, task in TASKS.items():
        if task.name == name:
            return task
    return None


def chosen(names: tuple[str, ...]) -> dict[str, tuple[Task, tuple[str, ...]]]:
    """{report key: (task, the selectors that chose it)} for the registered names among `names`, in order."""
    _load()
    out: dict[str, tuple[Task, tuple[str, ...]]] = {}
    for n in names:
        if n in TASKS:
            task = TASKS.get(n)
            prev = out.get(task.name, (task, ()))[1]
            out[task.name] = (task, prev + ((n,) if n not in prev else ()))
    return out


def in_report(tasks: dict[str, Any]) -> list[tuple[Task, dict[str, Any]]]:
    """(task, record) for every registered task with a record in report["tasks"]."""
    return [(t, rec) for name, rec in tasks.items() if isinstance(rec, dict) and (t := by_name(name)) is not None]
