"""`ropeconvert MODEL --method auto --target-context N`: measure, on the user's model at the target length, every
method the requested export can carry exactly, and export the winner.

Candidates: each registered method whose rope the format(s) write exactly for this architecture (convert/auto_plan.py
probes the writers themselves): GGUF never gets dpe, selfextend or dynamic (llama.cpp would run an approximation or
nothing); `--to both` takes only what both carry. longrope's factors come from the catalog or the default short
search and dpe's map from the default detection (convert/default_search.py) — exactly what `--method longrope` /
`--method dpe` without a file would export, so the winner's export is that method's export byte for byte.

One protocol for every candidate (and for the base, measured first; its first forward times the estimate):
- selection documents: the corpus's documents long enough for N, after the one the default search fits on (a
  fitness document is never a selection document); one window of N tokens each, and one of L (the original length)
  for the short-context guard (perplexity by the LongRoPE search's --truncate protocol, convert/search/fitness.py);
- retrieval: passkey prompts of N tokens (validators/passkey.py's template), depths spread evenly, keys seeded
  apart from validate's.
The rule (RULE) is printed before the run. The model loads once; a candidate is a rope swapped in (set_rope) or a
position map attached (DPE / Self-Extend). Scores are checkpointed after each candidate in `<out>.auto/auto.json`;
--resume continues, --force starts over.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ropeconvert.convert.auto_plan import Candidate, plan
from ropeconvert.convert.default_search import duration
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.errors import InputError, OutputError, RopeConvertError

FORMAT = "ropeconvert.auto/1"
SHORT_MARGIN = 0.10  # the short-context guard: perplexity at L at most 10% above the base's
SELECTION_SEED = 7919  # passkey keys: validate's default seed is 0, so selection and validation prompts differ
RULE = (f"1. short-context guard: a candidate whose perplexity at the original length is more than "
        f"{SHORT_MARGIN:.0%} above the base's is out (if every candidate is out, the guard is void and said so); "
        "2. the highest passkey accuracy at the target length wins; "
        "3. a tie goes to the lower perplexity at the target length.")


@dataclass
class Choice:
    method: str
    resolved: Any  # auto_plan.Resolved: the winner's knobs, origin and base rope
    leaderboard: dict[str, Any]  # what selection.json holds (convert/auto_report.py renders it)
    notes: list[str]


def choose(o: ConvertOptions, source, base, target: int, out: Path, say: Callable[[str], None]) -> Choice:
    """Measure the candidates and return the winner's method and knobs (the leaderboard with it)."""
    from transformers import AutoTokenizer

    from ropeconvert.convert.default_search import work_dir
    from ropeconvert.convert.search.run import pick_documents
    from ropeconvert.fanout import ModelRef, Workers, pool
    from ropeconvert.formats.source import hf_checkpoint
    from ropeconvert.validators import corpus
    from ropeconvert.validators.runtime import load

    candidates, skipped = plan(o, source, base, target)
    work = work_dir(out, ".auto")
    settings = {"model": o.model, "to": o.to, "target_context": target, "original_context": base.original_context,
                "candidates": [c.method for c in candidates], "search_budget": o.search_budget, "seed": o.seed,
                "text": o.text, "selection_documents": o.selection_documents,
                "selection_prompts": o.selection_prompts, "short_margin": SHORT_MARGIN}
    state = _start(work, settings, o.resume, o.force)
    fan = Workers.of(o)
    hf_dir = hf_checkpoint(source, o.progress)
    ref = ModelRef(str(hf_dir), original_context=o.original_context)  # the default search's too: one replica
    # with workers each worker holds the model; here only the tokenizer (and dpe's detection loads its own)
    runtime = None if fan.wanted else load(hf_dir, device=None, original_context=base.original_context)
    workers = pool(fan, {ref: runtime} if runtime is not None else None, say)
    try:
        tokenizer = runtime.tokenizer if runtime is not None else AutoTokenizer.from_pretrained(hf_dir)
        docs = corpus.load(o.text)
        fit = pick_documents(tokenizer, docs, 1, target, o.text)  # the default search's fitness document
        chosen = _selection_documents(tokenizer, docs, o, target, skip={n for n, _ in fit})
        protocol = workers.share((base, chosen, target, o.selection_prompts))
        say(f"auto: {len(candidates)} candidates ({', '.join(c.method for c in candidates)}) for --to {o.to}"
            + (f"; not candidates: {'; '.join(skipped)}" if skipped else ""))
        say(f"auto: selection on {len(chosen)} document(s) ({', '.join(n for n, _ in chosen)}) at {target} and "
            f"{base.original_context} tokens + {o.selection_prompts} passkey prompt(s) at {target} tokens; rule: {RULE}")
        if "base" not in state["scores"]:
            measured = next(workers.imap(score_job, [(ref, protocol, None)]))
            if "error" in measured:
                raise InputError(f"--method auto: the base model could not be measured ({measured['error']})",
                                 "fix that first, or pass --method METHOD")
            state["scores"]["base"] = measured
            say(_estimate(state["scores"]["base"], target, candidates, workers.workers))
            _save(work, state)
        todo, specs = [], []
        for cand in candidates:  # knobs first (a default search runs here, itself fanned out), then the scores
            if cand.method in state["scores"]:
                continue
            try:
                got = cand.resolve(o, source, base, target, work, say, runtime, None if runtime else workers)
                todo.append((cand, got))
                specs.append((ref, protocol, got.spec(cand.method)))
            except RopeConvertError as e:  # a candidate that cannot run here is out, with its reason
                state["scores"][cand.method] = {"error": e.one_line(), "seconds": 0.0}
                _save(work, state)
        scores = workers.imap(score_job, specs)
        for cand, got in todo:
            k = candidates.index(cand) + 1
            say(f"auto: candidate {k} of {len(candidates)}: {cand.method}" + _best_so_far(state))
            record = next(scores)
            if "error" not in record:
                record.update(origin=got.origin, knobs=_public(got.knobs))
            state["scores"][cand.method] = record
            _save(work, state)
    finally:
        workers.close()
        if runtime is not None:
            runtime.close()
    winner, reason, notes = decide(state["scores"], [c.method for c in candidates])
    got = next(c for c in candidates if c.method == winner).resolve(o, source, base, target, work, say, None)
    board = {"format": FORMAT, "rule": RULE, "settings": {k: v for k, v in settings.items() if k != "model"},
             "documents": [n for n, _ in chosen], "not_candidates": skipped, "winner": winner, "reason": reason,
             "base": state["scores"]["base"],
             "candidates": [{"method": c.method, **state["scores"][c.method]} for c in candidates]}
    return Choice(winner, got, board, notes)


def decide(scores: dict[str, dict], methods: list[str]) -> tuple[str, str, list[str]]:
    """The winner by RULE, why, and notes; InputError when no candidate could be measured."""
    measured = [m for m in methods if "error" not in scores[m] and _finite(scores[m]["ppl_target"])
                and _finite(scores[m]["ppl_original"])]
    if not measured:
        raise InputError("--method auto: no candidate could be measured on this model",
                         "see the reasons above, or pass --method METHOD")
    base_short = scores["base"]["ppl_original"]
    kept = [m for m in measured if scores[m]["ppl_original"] <= base_short * (1 + SHORT_MARGIN)]
    notes = []
    for m in methods:
        scores[m]["short_guard"] = m in kept if m in measured else None
    if not kept:
        notes.append(f"auto: every candidate raised the perplexity at the original length by more than "
                     f"{SHORT_MARGIN:.0%}; the short-context guard was void")
        kept = measured
    winner = min(kept, key=lambda m: (-scores[m]["passkey_target"], scores[m]["ppl_target"]))
    w = scores[winner]
    tied = [m for m in kept if scores[m]["passkey_target"] == w["passkey_target"]]
    reason = (f"passkey {w['passkey_target']:.0%} at the target"
              + (f", and the lowest perplexity ({w['ppl_target']:.4g}) of the {len(tied)} tied there" if len(tied) > 1
                 else " (the highest)")
              + f"; perplexity at the original length {w['ppl_original']:.4g} vs base {base_short:.4g}")
    return winner, reason, notes


class _Scorer:
    """The protocol: perplexity at N and at L on the selection documents, passkey accuracy at N."""

    def __init__(self, runtime, base, docs: list[tuple[str, list[int]]], target: int, prompts: int):
        from ropeconvert.convert.search.fitness import text_sample

        bos = runtime.bos_id
        self.runtime, self.base, self.target = runtime, base, target
        self.long = [text_sample(n, ids, target, bos) for n, ids in docs]
        self.short = [text_sample(n, ids, base.original_context, bos) for n, ids in docs]
        self.depths = [(i + 0.5) / prompts for i in range(prompts)]

    def __call__(self, spec) -> dict[str, Any]:
        from ropeconvert.convert.search.fitness import aggregate, sample_nll
        from ropeconvert.validators import passkey
        from ropeconvert.validators.dpe_attention import attach, detach
        from ropeconvert.validators.runtime import set_rope

        model = self.runtime.model
        mapped = spec is not None and spec.position_map is not None
        set_rope(model, None if mapped else spec, self.base)  # a position map keeps the native rope
        if mapped:
            attach(model, spec.position_map)
        try:
            t0 = time.perf_counter()
            nll = sample_nll(model, self.long[:1])
            first = time.perf_counter() - t0
            nll += sample_nll(model, self.long[1:])
            ppl_long = aggregate(nll)
            ppl_short = aggregate(sample_nll(model, self.short))
            pk = passkey.run(self.runtime, [self.target], self.depths, 1, seed=SELECTION_SEED, progress=False)
        finally:
            if mapped:
                detach(model)
        return {"ppl_target": _clean(ppl_long), "ppl_original": _clean(ppl_short),
                "passkey_target": float(sum(pk.accuracy[0]) / len(self.depths)), "first_forward": round(first, 3)}


def score_job(worker, model, protocol, spec) -> dict[str, Any]:
    """One candidate (or the base: spec None) by the protocol, on a worker's model (ropeconvert/fanout.py)."""
    base, docs, target, prompts = protocol
    t0 = time.perf_counter()
    try:
        record = _Scorer(worker.runtime(model), base, docs, target, prompts)(spec)
    except RopeConvertError as e:  # a candidate that cannot run here is out, with its reason
        record = {"error": e.one_line()}
    return {**record, "seconds": round(time.perf_counter() - t0, 3)}


def _selection_documents(tokenizer, docs, o: ConvertOptions, target: int, skip: set[str]):
    from ropeconvert.convert.search.run import pick_documents

    rest = [d for d in docs if d.name not in skip]
    try:
        return pick_documents(tokenizer, rest, o.selection_documents, target, o.text)
    except InputError as e:
        raise InputError(e.problem.replace("--documents", "--selection-documents") + " (after the search's "
                         "fitness document)", "lower --selection-documents or --target-context, or pass --text "
                         "FILE|DIR") from None


def _estimate(base: dict[str, Any], target: int, candidates: list[Candidate], workers: int) -> str:
    """From the base's measurement (timed from its first forward): the candidates cost about as much each."""
    total = base["seconds"] * len(candidates) / max(1, min(workers, len(candidates)))
    searched = [c.method for c in candidates if c.searches]
    return (f"auto: first forward of {target} tokens took {base.get('first_forward', 0):.1f} s, the base "
            f"{base['seconds']:.1f} s → about {duration(total)} for {len(candidates)} candidates"
            + (f" on {workers} workers" if workers > 1 else "")
            + (f", plus the default search of {', '.join(searched)} (its own estimate follows)" if searched else ""))


def _best_so_far(state: dict) -> str:
    done = {m: r for m, r in state["scores"].items() if m != "base" and "error" not in r}
    if not done:
        return ""
    m = min(done, key=lambda k: (-done[k]["passkey_target"], done[k]["ppl_target"] or math.inf))
    return f" (best so far: {m}, passkey {done[m]['passkey_target']:.0%}, ppl {done[m]['ppl_target']:.4g})"


def _start(work: Path, settings: dict, resume: bool, force: bool) -> dict:
    from ropeconvert.formats.safe_io import read_json

    path = work / "auto.json"
    if path.exists() and resume:
        data = read_json(path, "auto checkpoint", f"delete {work} (or pass --force) to start over")
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("scores"), dict):
            raise InputError(f"{path} is not a ropeconvert auto checkpoint", f"pass --force to start over in {work}")
        differ = sorted(k for k in settings if data.get("settings", {}).get(k) != settings[k])
        if differ:
            raise InputError(f"{work} holds an auto run made with other settings ({', '.join(differ)})",
                             "resume with the same options, or pass --force to start over")
        return data
    if os.path.lexists(work) and not force:
        raise OutputError(f"{work} holds an earlier --method auto run",
                          "pass --resume to continue it, or --force to start over")
    if os.path.lexists(work):
        if not work.is_dir() or work.is_symlink():
            raise OutputError(f"{work} exists and is not a directory", "move it away, or pass another --out")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = {"format": FORMAT, "settings": settings, "scores": {}}
    _save(work, data)
    return data


def _save(work: Path, data: dict) -> None:
    from ropeconvert.convert.search.checkpoint import write_json

    write_json(work / "auto.json", data)


def _public(knobs: dict[str, Any]) -> dict[str, Any]:
    """Knobs as the leaderboard shows them: file names, never machine paths."""
    return {k: (Path(v).name if isinstance(v, Path) else v) for k, v in knobs.items()
            if v is not None and k != "selected"}


def _clean(v: float) -> float | None:
    return float(v) if _finite(v) else None


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)

