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
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.validators import report as R
from ropeconvert.validators import task_registry
from ropeconvert.validators.export_info import default_base, export_info
from ropeconvert.validators.options import ValidateOptions

Options = ValidateOptions  # the name the API and tests have always used


def _documents(opts: Options):
    from ropeconvert.validators import corpus

    if opts.dataset:
        return opts.dataset, corpus.dataset(opts.dataset, limit=max(opts.documents, 8))
    source = str(opts.text) if opts.text is not None else opts.corpus
    return Path(source).name if Path(source).exists() else source, corpus.load(source)


def _open(path: str | Path, kind: str, device: str | None, progress: bool):
    if kind == "gguf":
        from ropeconvert.formats.source import resolve
        from ropeconvert.validators.gguf_runtime import GgufRuntime

        src = resolve(str(path), progress=progress)
        if src.kind == "gguf":
            return GgufRuntime(src.path)
    from ropeconvert.validators import runtime

    rt = runtime.load(path, device=device, progress=progress)
    if kind == "gguf":  # an HF base for a GGUF export: say plainly that two runtimes are compared
        rt.notes.append("the base ran in transformers (it is not a GGUF); the extended GGUF ran in llama.cpp")
    return rt


def original_context(spec: dict[str, Any] | None, rt) -> int:
    """The base's trained length: from the export's spec, else what the runtime reads from the model."""
    if spec:
        return int(spec["base"]["original_context"])
    return int(rt.base.original_context if hasattr(rt, "base") else rt.n_ctx_train)


def _measure(rt, label: str, opts: Options, prepared: dict[str, Any]) -> dict[str, Any]:
    return {name: task.run(rt, prepared[name], label, opts.progress) for name, (task, _) in opts.registered().items()}


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
    out_dir = R.report_dir_for(export)
    previous = _previous(out_dir / "report.json")  # a report that cannot be read is refused now, not after measuring
    R.check_writable(out_dir)
    corpus_name, docs = _documents(opts)
    ext = _open(export, kind, opts.device, opts.progress)
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
    runtime_info = {**ext.describe(), "engine": ext.kind}
    notes = list(opts.notes) + list(getattr(ext, "notes", []))
    from ropeconvert.validators.gguf_runtime import CrashGuard

    guard = CrashGuard()  # llama.cpp dying on one side: the other side still runs and is kept in the report
    try:
        extended = guard.run("extended", ext, lambda: _measure(ext, "extended", opts, prepared))
    finally:
        ext.close()
    base_rt = _open(base, kind, opts.device, opts.progress)
    notes += [n for n in getattr(base_rt, "notes", []) if n not in notes]
    try:
        based = guard.run("base", base_rt, lambda: _measure(base_rt, "base", opts, prepared))
    finally:
        base_rt.close()
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
