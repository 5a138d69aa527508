"""`ropeconvert validate`: base vs extended on the same tokens and prompts, then report.json + plots + report.md.

One model is in memory at a time: the extended export is loaded as a user would (stock transformers for an HF
export, llama.cpp for a GGUF), measured, freed; then the base. Every prompt is built before anything is measured,
with the extended model's tokenizer, so both see the same token ids and the same seeded prompts.

Each task asked for (validators/task_registry.py: ppl, passkey, niah, the RULER tasks) is prepared, measured,
recorded, checked and plotted through its registered object; this module names none of them. A carried task's
record (parity) is kept from the previous report of the same export.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.validators import report as R
from ropeconvert.validators import task_registry
from ropeconvert.validators.engines import open_runtime
from ropeconvert.validators.export_info import default_base, export_info
from ropeconvert.validators.options import ValidateOptions

Options = ValidateOptions  # the name the API and tests have always used


def _documents(opts: Options):
    from ropeconvert.validators import corpus

    if opts.dataset:
        return opts.dataset, corpus.dataset(opts.dataset, limit=max(opts.documents, 8))
    source = str(opts.text) if opts.text is not None else opts.corpus
    return Path(source).name if Path(source).exists() else source, corpus.load(source)


def original_context(spec: dict[str, Any] | None, rt) -> int:
    """The base's trained length: from the export's spec, else what the runtime reads from the model."""
    if spec:
        return int(spec["base"]["original_context"])
    return int(rt.base.original_context if hasattr(rt, "base") else rt.n_ctx_train)


def validate(export: Path, base: str | None, opts: Options) -> tuple[dict[str, Any], Path]:
    """Measure base and extended, write the report into the export (or beside a GGUF); returns (report, path)."""
    opts.check()
    export = Path(export).expanduser().absolute()
    kind, spec, provenance = export_info(export)
    base = base or default_base(provenance)
    from ropeconvert.formats.tensors import require_safetensors

    for model in (export, base):  # pickle weights (and unparsable loader JSON) refused before any measuring
        require_safetensors(model)
    target = (spec or {}).get("target_context")
    if target:
        opts.check_limit(int(target), "the export's target context")
    max_len = _engine_length(opts, kind, spec)
    out_dir = R.report_dir_for(export)
    previous = _previous(out_dir / "report.json")  # a report that cannot be read is refused now, not after measuring
    R.check_writable(out_dir)
    corpus_name, docs = _documents(opts)
    ext = open_runtime(export, kind, opts.device, opts.progress, opts.engine, max_len)
    try:
        original = original_context(spec, ext)
        if not target:  # an export without a spec: its own trained context bounds the default sweep (2× it)
            opts.check_limit(2 * original, "twice the context the export was trained for (it records no target)")
        lengths = opts.lengths or tuple(sorted({max(16, original // 2), original, target or 2 * original}))
        prepared = {name: task.prepare(task_registry.TaskContext(selectors, opts, lengths, ext.tokenizer, original,
                                                                 target, docs, corpus_name, ext.bos_id is not None))
                    for name, (task, selectors) in opts.registered().items()}  # every prompt before measuring
    except BaseException:
        ext.close()
        raise
    used = next((p.documents for p in prepared.values() if getattr(p, "documents", None) is not None),
                [d.name for d in docs[:opts.documents]])  # the documents a task read, else the first ones
    runtime_info = {**ext.describe(), "engine": ext.kind}  # transformers, llama.cpp or vllm
    notes = list(opts.notes) + list(getattr(ext, "notes", []))
    measured, guard = _measure_sides(ext, export, base, kind, opts, prepared, notes, max_len)
    based, extended = measured["base"], measured["extended"]
    based, extended, crash_notes = guard.fill(based, extended)
    notes += crash_notes
    tasks: dict[str, Any] = {}
    for name, (task, _) in opts.registered().items():
        b, e = based.get(name), extended.get(name)  # a crashed side: the other side's shape, nothing measured
        tasks[name] = task.record(prepared[name], b if b is not None else task.blank(e),
                                  e if e is not None else task.blank(b))
    if previous.get("export") in (str(export), export.name):  # e.g. a parity run on this same export stays
        for task in task_registry.all_tasks():
            if task.carried and task.name in previous.get("tasks", {}):
                tasks[task.name] = previous["tasks"][task.name]
    from ropeconvert.formats.source import public_name  # reports are published: no machine paths in them

    report = {"schema": R.SCHEMA_ID, "created": R.now(), "export": export.name, "base": public_name(base), "spec": spec,
              "runtime": _runtime_info(runtime_info), "corpus": {"name": corpus_name, "documents": list(used)},
              "tasks": tasks, "checks": R.checks(tasks, original), "original_context": original,
              "target_context": target, "notes": notes}
    from ropeconvert.convert import auto_report  # --method auto's leaderboard, when the export has one

    figs = R.figures(tasks, original, target)
    board = auto_report.read(out_dir)
    if board is not None:
        report["selection"] = board
        figs["selection"] = auto_report.figure(board)
    path = R.write(report, out_dir, figs)
    guard.reraise(path)  # a crash is still exit 2, now naming the report that kept the other side
    return json.loads(path.read_text()), path


def _measure_sides(ext, export: Path, base: str, kind: str, opts: Options, prepared: dict[str, Any],
                   notes: list[str], max_len: int | None):
    """({side: its results, or None where llama.cpp crashed}, the CrashGuard). Serially one model is in memory at
    a time: the extended export (already open), then the base. With --workers/--ray each worker opens the models
    itself and the cells fan out (validators/cells.py)."""
    from types import SimpleNamespace

    from ropeconvert import fanout
    from ropeconvert.validators import cells
    from ropeconvert.validators.gguf_runtime import CrashGuard

    tasks = {name: task for name, (task, _) in opts.registered().items()}
    refs = {side: fanout.ModelRef(str(path), "validate", opts.device, fmt=kind, engine=opts.engine, max_len=max_len)
            for side, path in (("extended", export), ("base", base))}
    fan, guard, measured = fanout.Workers.of(opts), CrashGuard(), {}
    if fan.wanted:
        engines = {"extended": ext.kind, "base": "its runtime"}
        ext.close()
        pool = fanout.pool(fan, say=(lambda line: print(line, file=sys.stderr)) if opts.progress else print_nothing)
        try:
            for side in ("extended", "base"):
                measured[side] = guard.run(side, SimpleNamespace(kind=engines[side]), lambda s=side: cells.measure(
                    pool, refs[s], s, tasks, prepared, opts.progress, notes))
        finally:
            pool.close()
        return measured, guard
    for side in ("extended", "base"):
        rt = ext if side == "extended" else open_runtime(base, kind, opts.device, opts.progress, opts.engine, max_len)
        try:
            measured[side] = guard.run(side, rt, lambda s=side, r=rt: cells.measure(
                fanout.Serial({refs[s]: r}), refs[s], s, tasks, prepared, opts.progress, notes))
        finally:
            rt.close()
    return measured, guard


def _engine_length(opts: Options, kind: str, spec: dict[str, Any] | None) -> int | None:
    """--engine vllm: refused where it cannot run; else the longest prompt it will see (the engine is sized to it)."""
    if opts.engine != "vllm":
        return None
    import dataclasses

    from ropeconvert.validators.vllm_runtime import check_engine

    check_engine(kind, spec)
    asked = [v for f in dataclasses.fields(opts) if f.metadata["cli"]["lengths"] for v in getattr(opts, f.name) or ()]
    longest = max(asked) if asked else (spec or {}).get("target_context")
    if not longest:
        raise InputError("--engine vllm needs the longest length to size its engine, and the export records no "
                         "target", "pass --lengths N,…")
    return int(longest) + 256  # the answer's new tokens and the chat/BOS tokens around the prompt


def print_nothing(line: str) -> None:
    pass


def _previous(path: Path) -> dict[str, Any]:
    """The report a previous validate left here (its carried tasks' records are kept), or {}. One that cannot be
    parsed is refused before anything is measured; one of another schema is only not carried over."""
    from ropeconvert.formats.safe_io import check_depth, read_json

    if not os.path.lexists(path):
        return {}
    fix = f"delete {path} (validate writes a new one) or restore it"
    data = read_json(path, "previous validation report", fix)
    check_depth(data, f"previous validation report {path}", fix)
    try:
        R.check_schema(data)
    except InputError:
        return {}
    return data


def _runtime_info(info: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, **info}
