"""`ropeconvert validate`: base vs extended on the same tokens and prompts, then report.json + plots + report.md.

One model is in memory at a time: the extended export is loaded as a user would (stock transformers for an HF
export, llama.cpp for a GGUF), measured, freed; then the base. Both see the same token ids (tokenised once with the
extended model's tokenizer) and the same seeded passkey/needle prompts.

ppl, passkey and niah run through this module's own code; every task registered in validators/task_registry.py
(RULER) is prepared, measured, recorded, checked and plotted through its registered object, without a branch here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError, UnknownNameError
from ropeconvert.registry import Registry
from ropeconvert.validators import report as R
from ropeconvert.validators import task_registry
from ropeconvert.validators.export_info import default_base, export_info

TASKS: Registry[str] = Registry("validation task")
for _name, _what in {"ppl": "sliding-window perplexity", "passkey": "landmark passkey retrieval",
                     "niah": "DPE 4-needle retrieval"}.items():
    TASKS.register(_name, _what)
TASKS.freeze()
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)


@dataclass
class Options:
    tasks: tuple[str, ...] = ("ppl", "passkey")
    lengths: tuple[int, ...] | None = None  # default: original/2, original, target
    passkey_lengths: tuple[int, ...] | None = None  # default: lengths
    niah_lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    trials: int = 2
    niah_samples: int = 2
    documents: int = 2
    corpus: str = "austen"  # a corpus name or a --text path
    dataset: str | None = None
    truncate: bool = True
    stride: int = 256
    max_windows: int = 10
    device: str | None = None
    seed: int = 0
    samples: int = 4  # RULER samples per task and length (RULER uses 500)
    threshold: str = "85.6"  # RULER effective-length threshold, or "base" (the base's average at its original)
    qa_files: tuple[str, ...] = ()  # SQuAD / HotpotQA files for RULER's qa_1 / qa_2
    progress: bool = True
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        known: Registry[str] = Registry("validation task")
        for name in (*TASKS, *task_registry.selectors()):
            known.register(name, name)
        for name in self.tasks:
            if name not in known:
                raise UnknownNameError(known.unknown_message(name),
                                       f"choose from: {', '.join(TASKS)}, ruler or RULER task names")
        for task, selectors in self.registered().values():
            task.check(self, selectors)
        for label, values in (("--lengths", self.lengths), ("--passkey-lengths", self.passkey_lengths),
                              ("--niah-lengths", self.niah_lengths)):
            if values is not None and (not values or any(v < 16 for v in values)):
                raise InputError(f"{label} must be token counts ≥ 16, got {list(values)}", "e.g. --lengths 4096,8192,16384")
        if any(not 0 <= d <= 1 for d in self.depths) or not self.depths:
            raise InputError(f"--depths must lie in [0, 1], got {list(self.depths)}", "e.g. --depths 0.1,0.5,0.9")
        for label, value in (("--trials", self.trials), ("--documents", self.documents),
                             ("--niah-samples", self.niah_samples), ("--stride", self.stride),
                             ("--max-windows", self.max_windows)):
            if value < 1:
                raise InputError(f"{label} must be ≥ 1, got {value}")

    def registered(self) -> dict[str, tuple[task_registry.Task, tuple[str, ...]]]:
        """The registered tasks asked for: {report key: (task, the --tasks names that chose it)}."""
        return task_registry.chosen(self.tasks)

    def check_limit(self, limit: int, what: str) -> None:
        """Refuse any length past `limit` before anything is measured: the export promises nothing there, and a
        50M-token prompt would only end in the tokenizer's panic."""
        for label, values in (("--lengths", self.lengths), ("--passkey-lengths", self.passkey_lengths),
                              ("--niah-lengths", self.niah_lengths)):
            if values is not None and max(values) > limit:
                raise InputError(f"{label} {max(values)} is longer than {what} ({limit} tokens)",
                                 f"measure at most {limit} tokens, e.g. {label} {max(16, limit // 2)},{limit}")


def _documents(opts: Options):
    from ropeconvert.validators import corpus

    if opts.dataset:
        return opts.dataset, corpus.dataset(opts.dataset, limit=max(opts.documents, 8))
    return Path(opts.corpus).name if Path(opts.corpus).exists() else opts.corpus, corpus.load(opts.corpus)


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


def _measure(rt, label: str, opts: Options, lengths, doc_ids, haystack, prepared) -> dict[str, Any]:
    from ropeconvert.validators import niah, passkey, perplexity

    out: dict[str, Any] = {}
    if "ppl" in opts.tasks:
        out["ppl"] = perplexity.sweep(rt.scorer, doc_ids, list(lengths["ppl"]), bos_id=rt.bos_id, stride=opts.stride,
                                      truncate=opts.truncate, max_windows=opts.max_windows, progress=opts.progress,
                                      label=f"{label} ppl")
    if "passkey" in opts.tasks:
        out["passkey"] = passkey.run(rt, list(lengths["passkey"]), list(opts.depths), opts.trials, seed=opts.seed,
                                     progress=opts.progress, label=f"{label} passkey")
    if "niah" in opts.tasks:
        out["niah"] = niah.run(rt, haystack, list(lengths["niah"]), opts.niah_samples, seed=opts.seed,
                               progress=opts.progress, label=f"{label} niah")
    for name, (task, _) in opts.registered().items():
        out[name] = task.run(rt, prepared[name], label, opts.progress)
    return out


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
        base_lengths = opts.lengths or tuple(sorted({max(16, original // 2), original, target or 2 * original}))
        lengths = {"ppl": base_lengths, "passkey": opts.passkey_lengths or base_lengths,
                   "niah": opts.niah_lengths or base_lengths}
        # tokenise once, only as much of each document as the sweep can use, with the extended model's tokenizer
        from ropeconvert.validators.corpus import check_lengths, token_ids
        from ropeconvert.validators.perplexity import tokens_needed

        need = tokens_needed(list(lengths["ppl"]), opts.stride, opts.truncate, opts.max_windows)
        doc_ids = token_ids(docs, ext.tokenizer, need if need < 1 << 40 else None,
                            min(lengths["ppl"]) - 1 if "ppl" in opts.tasks else 0, opts.documents)
        haystack = "\n\n".join(d.text for d in docs)
        check_lengths(corpus_name, doc_ids, haystack, ext.tokenizer,
                      ppl=lengths["ppl"] if "ppl" in opts.tasks else (),
                      niah=lengths["niah"] if "niah" in opts.tasks else (), bos=ext.bos_id is not None)
        prepared = {name: task.prepare(task_registry.TaskContext(selectors, opts, base_lengths, ext.tokenizer,
                                                                 original, target, docs, corpus_name))
                    for name, (task, selectors) in opts.registered().items()}  # every prompt before measuring
    except BaseException:
        ext.close()
        raise
    runtime_info = {**ext.describe(), "engine": ext.kind}
    bos = ext.bos_id is not None
    notes = list(opts.notes) + list(getattr(ext, "notes", []))
    from ropeconvert.validators.gguf_runtime import CrashGuard

    guard = CrashGuard()  # llama.cpp dying on one side: the other side still runs and is kept in the report
    try:
        extended = guard.run("extended", ext, lambda: _measure(ext, "extended", opts, lengths, doc_ids, haystack,
                                                                           prepared))
    finally:
        ext.close()
    base_rt = _open(base, kind, opts.device, opts.progress)
    notes += [n for n in getattr(base_rt, "notes", []) if n not in notes]
    try:
        based = guard.run("base", base_rt, lambda: _measure(base_rt, "base", opts, lengths, doc_ids, haystack,
                                                                           prepared))
    finally:
        base_rt.close()
    based, extended, crash_notes = guard.fill(based, extended)
    notes += crash_notes
    tasks = _tasks(based, extended, opts, bos)
    for name, (task, _) in opts.registered().items():
        b, e = based.get(name), extended.get(name)  # a crashed side: the other side's shape, nothing measured
        tasks[name] = task.record(prepared[name], b if b is not None else task.blank(e),
                                  e if e is not None else task.blank(b))
    from ropeconvert.formats.source import public_name  # reports are published: no machine paths in them

    if previous.get("export") in (str(export), export.name) and "parity" in previous.get("tasks", {}):
        tasks["parity"] = previous["tasks"]["parity"]  # a parity run on this same export stays in its report
    report = {"schema": R.SCHEMA_ID, "created": R.now(), "export": export.name, "base": public_name(base), "spec": spec,
              "runtime": _runtime_info(runtime_info), "corpus": {"name": corpus_name, "documents": list(doc_ids)},
              "tasks": tasks, "checks": R.checks(tasks, original), "original_context": original,
              "target_context": target, "notes": notes}
    path = R.write(report, out_dir, R.figures(tasks, original, target))
    guard.reraise(path)  # a crash is still exit 2, now naming the report that kept the other side
    return json.loads(path.read_text()), path


def _previous(path: Path) -> dict[str, Any]:
    """The report a previous validate left here (its parity result is carried over), or {}. One that cannot be
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


def _tasks(base: dict[str, Any], ext: dict[str, Any], opts: Options, bos: bool) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    if "ppl" in ext:
        b, e = base["ppl"], ext["ppl"]
        tasks["ppl"] = {"lengths": e.lengths, "base": b.mean, "extended": e.mean,
                        "per_document": {"base": b.per_document, "extended": e.per_document},
                        "protocol": {"truncate": opts.truncate, "stride": opts.stride,
                                     "max_windows": opts.max_windows, "bos": bos}}
    if "passkey" in ext:
        b, e = base["passkey"], ext["passkey"]
        tasks["passkey"] = {"lengths": e.lengths, "depths": e.depths, "trials": e.trials, "base": b.accuracy,
                            "extended": e.accuracy, "tokens": e.tokens,
                            "samples": {"base": b.samples, "extended": e.samples}}
    if "niah" in ext:
        b, e = base["niah"], ext["niah"]
        tasks["niah"] = {"lengths": e.lengths, "base": b.score, "extended": e.score,
                         "samples_per_length": opts.niah_samples, "samples": {"base": b.samples, "extended": e.samples}}
    return tasks
