"""The RULER validation task (NVIDIA/RULER, arXiv:2404.06654): its synthetic tasks (validators/ruler) at the sweep's
lengths, base vs extended on the same seeded prompts, scored with RULER's metrics; the RULER average per length and
the effective length of both models (absolute threshold, 85.6 by default, or `base`: the base's own average at its
original context).

`--tasks ruler` runs every offline task (qa_1/qa_2 only with `--qa-file`; otherwise they are listed as not run);
`--tasks niah_single_1,vt` runs those. Answers are greedy, at most the task's answer budget, cut at the end of
their first line (validators/generate.py `complete`); the report keeps every prediction, its references, its score
and its prompt's SHA-256 (so the same prompts can be shown to have run through transformers and llama.cpp).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.validators import ruler as R
from ropeconvert.validators.task_registry import TaskContext, register

GENERATION = "greedy; at most the task's answer budget; ends at EOS or at the first newline after the answer starts"


def threshold_of(value: Any) -> float | str:
    """--threshold: a score in (0, 100], or "base" (the relative mode)."""
    if str(value).strip().lower() == "base":
        return "base"
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0 < t <= 100:
        raise InputError(f"--threshold must be a RULER score in (0, 100] or 'base', got {value!r}",
                         "e.g. --threshold 85.6 (RULER's) or --threshold base (the base's own average at its "
                         "original context)")
    return t


@dataclass
class Prepared:
    tasks: list[str]  # the tasks that run
    lengths: list[int]
    samples: dict[tuple[str, int], list[R.Sample]]
    not_run: dict[str, str] = field(default_factory=dict)
    original: int = 0
    threshold: float | str = R.RULER_THRESHOLD
    per_task: int = 1
    haystack: str = ""


class RulerTask:
    name = "ruler"
    title = "RULER (tasks × lengths)"
    higher_is_better = True
    selectors = ("ruler", *R.RULER_TASKS)
    carried = False

    # ---- before any model is loaded ------------------------------------------------------------------------------
    def check(self, opts, selectors: tuple[str, ...]) -> None:
        if isinstance(opts.samples, bool) or not isinstance(opts.samples, int) or opts.samples < 1:
            raise InputError(f"--samples must be ≥ 1, got {opts.samples}", "e.g. --samples 4 (RULER uses 500)")
        threshold_of(opts.threshold)
        kinds = {R.load_qa(f).kind for f in opts.qa_files}
        for name in selectors:
            need = R.get_task(name).needs if name != "ruler" else None
            if need in ("squad", "hotpotqa") and need not in kinds:
                kind = "SQuAD" if need == "squad" else "HotpotQA"
                raise InputError(f"{name} needs a {kind} file and none was given",
                                 f"pass --qa-file FILE (a {kind} JSON), or use --tasks ruler to list it as not run")

    def prepare(self, ctx: TaskContext) -> Prepared:
        opts = ctx.options
        names = list(R.RULER_TASKS) if "ruler" in ctx.selectors else [n for n in R.RULER_TASKS if n in ctx.selectors]
        lengths = sorted(set(ctx.lengths))
        threshold = threshold_of(opts.threshold)
        if threshold == "base" and not any(n <= ctx.original for n in lengths):
            raise InputError(f"--threshold base is the base's RULER average at its original context ({ctx.original} "
                             f"tokens), and no length at or below it is measured ({lengths})",
                             f"add {ctx.original} to --lengths")
        qa = {d.kind: d for d in (R.load_qa(f) for f in opts.qa_files)}
        essay = None
        if any(R.get_task(n).needs == "essay" for n in names):
            essay = R.EssayHaystack(ctx.documents, ctx.corpus_name)
        title = ctx.corpus_name.capitalize() if ctx.corpus_name in ("austen", "shakespeare") else ctx.corpus_name
        out = Prepared([], lengths, {}, {}, ctx.original, threshold, opts.samples,
                       f"essay haystack: {title} in place of Paul Graham's essays")
        for name in names:
            need = R.get_task(name).needs
            if need in ("squad", "hotpotqa") and need not in qa:
                out.not_run[name] = f"needs a {'SQuAD' if need == 'squad' else 'HotpotQA'} file (--qa-file)"
                continue
            try:
                for n in lengths:
                    out.samples[(name, n)] = R.make_samples(name, n, ctx.tokenizer, opts.samples, opts.seed,
                                                            essay=essay, qa=qa.get(need))
            except R.TaskNotRun as e:  # e.g. cwe past the offline word list: listed, not guessed at
                out.not_run[name] = e.problem
                for n in lengths:
                    out.samples.pop((name, n), None)
                continue
            out.tasks.append(name)
        if not out.tasks:
            raise InputError("no RULER task can run: " + "; ".join(f"{k} {v}" for k, v in out.not_run.items()),
                             "pass --qa-file, or choose other tasks")
        return out

    # ---- measuring -----------------------------------------------------------------------------------------------
    def run(self, runtime, prepared: Prepared, label: str, progress: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from ropeconvert.validators.generate import complete

        predictions: dict[tuple[str, int], list[str | None]] = {}
        seconds: dict[tuple[str, int], float | None] = {}
        with tqdm(total=len(prepared.samples), desc=f"{label} ruler", unit="cell", disable=not progress,
                  leave=False) as bar:
            for (name, n), samples in prepared.samples.items():
                start = time.perf_counter()
                predictions[(name, n)] = complete(runtime, [s.prompt for s in samples], samples[0].max_new_tokens)
                seconds[(name, n)] = round(time.perf_counter() - start, 3)
                bar.update(1)
        return {"predictions": predictions, "seconds": seconds}

    def cells(self, prepared: Prepared) -> list[Prepared]:
        """One part per (task, length) cell: validation fans them out (validators/cells.py)."""
        return [replace(prepared, samples={key: samples}) for key, samples in prepared.samples.items()]

    def merge(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": {k: v for r in results for k, v in r["predictions"].items()},
                "seconds": {k: v for r in results for k, v in r["seconds"].items()}}

    def blank(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": {k: [None] * len(v) for k, v in result["predictions"].items()},
                "seconds": {k: None for k in result["seconds"]}}

    # ---- the record ----------------------------------------------------------------------------------------------
    def record(self, prepared: Prepared, base: dict[str, Any], extended: dict[str, Any]) -> dict[str, Any]:
        sides = {"base": base, "extended": extended}
        scores, intervals, averages, seconds, samples = {}, {}, {}, {}, {}
        for side, result in sides.items():
            scores[side], intervals[side], seconds[side], samples[side] = {}, {}, {}, []
            for name in prepared.tasks:
                row, band, secs = [], [], []
                for n in prepared.lengths:
                    cell, preds = prepared.samples[(name, n)], result["predictions"][(name, n)]
                    secs.append(result["seconds"][(name, n)])
                    if None in preds:  # that side was not measured
                        row.append(None)
                        band.append(None)
                        continue
                    per = R.per_sample(name, preds, [s.outputs for s in cell])
                    row.append(R.score(name, preds, [s.outputs for s in cell]))
                    band.append(list(R.interval95(per)))
                    samples[side] += [{"task": name, "length": n, "seed": s.seed, "tokens": s.length,
                                       "prompt_sha256": hashlib.sha256(s.prompt.encode()).hexdigest(),
                                       "outputs": list(s.outputs), "prediction": p, "score": round(v * 100, 2)}
                                      for s, p, v in zip(cell, preds, per)]
                scores[side][name], intervals[side][name], seconds[side][name] = row, band, secs
            averages[side] = [None if any(scores[side][t][i] is None for t in prepared.tasks) else
                              round(R.ruler_average({t: scores[side][t][i] for t in prepared.tasks}), 2)
                              for i in range(len(prepared.lengths))]
        return {"lengths": prepared.lengths, "tasks": prepared.tasks, "scores": scores, "intervals": intervals,
                "average": averages, "effective_length": self._effective(prepared, averages),
                "samples_per_task": prepared.per_task, "not_run": prepared.not_run, "haystack": prepared.haystack,
                "generation": GENERATION, "seconds": seconds, "samples": samples}

    def _effective(self, prepared: Prepared, averages: dict[str, list]) -> dict[str, Any]:
        lengths, base = prepared.lengths, averages["base"]
        out: dict[str, Any] = {"mode": "relative" if prepared.threshold == "base" else "absolute",
                               "threshold": None, "threshold_at": None}
        if prepared.threshold == "base":
            pairs = [(n, a) for n, a in zip(lengths, base) if a is not None]
            if pairs:
                out["threshold"], out["threshold_at"] = R.relative_threshold(
                    [n for n, _ in pairs], [a for _, a in pairs], prepared.original)
        else:
            out["threshold"] = prepared.threshold
        for side in ("base", "extended"):
            pairs = [(n, a) for n, a in zip(lengths, averages[side]) if a is not None]
            if out["threshold"] is None or not pairs:
                out[side] = {"length": None, "label": "not measured"}
                continue
            eff = R.effective_length([n for n, _ in pairs], [a for _, a in pairs], out["threshold"])
            out[side] = {"length": eff.length, "label": eff.label}
        return out

    # ---- rendering -----------------------------------------------------------------------------------------------
    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        far = [(n, b, e) for n, b, e in zip(record["lengths"], record["average"]["base"],
                                            record["average"]["extended"]) if n > (original or 0)]
        missing = [n for n, b, e in far if b is None or e is None]
        if missing:  # a side's llama.cpp crashed: nothing shows the extension holds there
            return [{"name": "ruler_not_worse", "passed": False, "detail": f"not measured at {missing}"}]
        rows = far
        if not rows:
            return []
        worse = [n for n, b, e in rows if e < b]
        detail = "; ".join(f"{n}: {e:.1f} vs base {b:.1f}" for n, b, e in rows)
        return [{"name": "ruler_not_worse", "passed": not worse, "detail": f"RULER average {detail}"}]

    def figure(self, record: dict[str, Any], original: int | None, target: int | None):
        from ropeconvert.validators.report_plots import plot_ruler

        return plot_ruler(record, original)

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        out = []
        for name in record["tasks"]:
            out += [(f"RULER {name}", str(n), _score(b), _score(e)) for n, b, e in
                    zip(record["lengths"], record["scores"]["base"][name], record["scores"]["extended"][name])]
        out += [("RULER average", str(n), _score(b), _score(e)) for n, b, e in
                zip(record["lengths"], record["average"]["base"], record["average"]["extended"])]
        eff = record["effective_length"]
        out.append(("RULER effective length", _threshold(eff), eff["base"]["label"], eff["extended"]["label"]))
        return out

    def summary(self, record: dict[str, Any]) -> list[str]:
        """[the headline (effective lengths), how it was measured, (tasks not run)]."""
        eff = record["effective_length"]
        lines = [f"RULER effective length ({_threshold(eff)}): base {eff['base']['label']}, extended "
                 f"{eff['extended']['label']}",
                 f"RULER: {len(record['tasks'])} tasks, {record['samples_per_task']} samples per task and length "
                 f"(RULER uses 500; 95% intervals in report.json); {record['haystack']}"]
        if record["not_run"]:
            lines.append("RULER not run: " + "; ".join(f"{k} ({v})" for k, v in record["not_run"].items()))
        return lines

    def card(self, record: dict[str, Any]) -> str:
        """The table (cells "base / extended") under how it was measured; the headline is the card's own."""
        lengths = record["lengths"]
        head = ["task", *(f"{n:,}" for n in lengths)]
        body = [[name, *(f"{_score(b)} / {_score(e)}" for b, e in zip(record["scores"]["base"][name],
                                                                      record["scores"]["extended"][name]))]
                for name in record["tasks"]]
        body.append(["**average**", *(f"**{_score(b)} / {_score(e)}**" for b, e in
                                      zip(record["average"]["base"], record["average"]["extended"]))])
        table = "\n".join(["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(lengths)] +
                          ["| " + " | ".join(r) + " |" for r in body])
        return "\n\n".join(["### RULER (score 0–100, base / extended)", *self.summary(record)[1:], table])


def _score(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _threshold(eff: dict[str, Any]) -> str:
    t = eff["threshold"]
    if t is None:
        return "threshold: base not measured"
    if eff["mode"] == "relative":
        return f"threshold {t:.1f} = the base's average at {eff['threshold_at']}"
    return f"threshold {t:g}"


register(RulerTask())
