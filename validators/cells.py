"""Validation as cells: one side (base or extended) × one task × one part of it, measured serially on the runtime
validate opened, or fanned out to Ray workers (ropeconvert/fanout.py) that each open the model themselves.

A task may split itself into parts (`cells(prepared)` → prepared parts, `merge(results)` → one result): RULER's
parts are its (task, length) cells. A task without them is one cell. Serially every task is one cell (its own
progress bar); with workers the parts are spread over them and merged back in order, so the result — and the
report — is the same as a serial run's.
"""
from __future__ import annotations

from typing import Any


def parts(task, prepared) -> list:
    split = getattr(task, "cells", None)
    return split(prepared) if split is not None else [prepared]


def merge(task, results: list) -> Any:
    join = getattr(task, "merge", None)
    return join(results) if join is not None else results[0]


def cell_job(worker, model, task_name: str, part, label: str, progress: bool) -> tuple[Any, list[str]]:
    """One cell on a worker's runtime: (the task's result for this part, the runtime's notes)."""
    from ropeconvert.validators import task_registry

    rt = worker.runtime(model)
    return task_registry.by_name(task_name).run(rt, part, label, progress), list(getattr(rt, "notes", []))


def measure(pool, model, label: str, tasks: dict[str, Any], prepared: dict[str, Any], progress: bool,
            notes: list[str]) -> dict[str, Any]:
    """Every task on one side: {task name: result}; the runtime's notes are added to `notes`."""
    split = pool.workers > 1
    jobs = [(name, part) for name, task in tasks.items()
            for part in (parts(task, prepared[name]) if split else [prepared[name]])]
    shown = progress and not split  # a bar per task serially; workers report nothing mid-cell
    results: dict[str, list] = {name: [] for name in tasks}
    for (name, _), (result, cell_notes) in zip(jobs, pool.imap(
            cell_job, [(model, name, part, label, shown) for name, part in jobs])):
        results[name].append(result)
        notes += [n for n in cell_notes if n not in notes]
    return {name: merge(tasks[name], results[name]) for name in tasks}
