"""`ropeconvert search`: load the model once, build the fitness samples, run the phases, write the outputs.

Only the rope changes between candidates (validators.runtime.set_rope swaps one module; no weights reload), and a
candidate is evaluated once: the checkpoint's evaluation list is the cache (children must be new, references are
stored by name). `--budget` caps the evaluations of each phase; the references (PI, NTK, YaRN) are three more,
evaluated once and logged.
"""
from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ropeconvert.convert.search import checkpoint, longrope, longrope2, report
from ropeconvert.convert.search.evolution import Evolution, Settings, best_record, fresh_state
from ropeconvert.convert.search.fitness import text_sample
from ropeconvert.convert.search.needle import needle_samples
from ropeconvert.convert.search.options import SearchOptions  # noqa: F401  (the options live there; re-exported)
from ropeconvert.convert.spec import BaseRope, resolve_target
from ropeconvert.errors import InputError, OutputError, SpecError, UnsupportedError

METHODS = ("longrope", "longrope2")


@dataclass
class SearchResult:
    out: Path
    complete: bool
    factors: Path | None
    log: Path
    plot: Path
    phases: dict = field(default_factory=dict)
    documents: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_options(o: SearchOptions) -> Settings:
    """Refuse bad numbers before anything slow happens."""
    if o.method not in METHODS:
        raise SpecError(f"search method {o.method!r} is not one of {', '.join(METHODS)}", "pass --method longrope or longrope2")
    for name, value, low in (("--population", o.population, 2), ("--documents", o.documents, 1),
                             ("--generations", o.generations, 0), ("--patience", o.patience, 1)):
        if value < low:
            raise SpecError(f"{name} must be at least {low}, got {value}")
    settings = Settings.for_population(o.population, generations=o.generations, patience=o.patience)
    budget = o.budget if o.budget is not None else o.population + o.generations * (settings.mutations + settings.crossovers)
    if budget < o.population:
        raise SpecError(f"--budget {budget} is smaller than the population {o.population}: the initial population "
                        "alone needs one evaluation per member", "raise --budget or lower --population")
    if o.stop_after is not None and o.stop_after < 1:
        raise SpecError(f"--stop-after must be at least 1 generation, got {o.stop_after}")
    from ropeconvert.fanout import Workers

    Workers.of(o).check()  # --workers without Ray installed: one line before anything loads
    return Settings(**{**settings.__dict__, "budget": budget})


def base_of(source, original_context: int | None) -> BaseRope:
    """The source's base rope, refusing a source that already carries scaling (the search replaces the whole rope)."""
    try:
        return source.base_rope(original_context)  # Source reads it once (formats/source.py)
    except UnsupportedError as e:
        raise UnsupportedError(e.problem, "search from the base model (the search replaces the whole rope)") from None


def search(o: SearchOptions, source=None, runtime=None, estimate=None, pool=None) -> SearchResult:
    """Run the search `o` asks for. `source` (a formats.source.Source) and `runtime` (a loaded
    validators.runtime.Runtime of it) are reused when given: the main command's default search and --method auto
    resolve and load the model once; so is a Ray `pool` (--method auto's workers). `estimate(seconds, evaluations)`
    hears the first evaluation's time."""
    from ropeconvert.formats.source import hf_checkpoint, resolve
    from ropeconvert.formats.tensors import require_safetensors
    from ropeconvert.validators.runtime import pick_device

    settings = check_options(o)
    source = source or resolve(o.model, progress=o.progress)
    require_safetensors(source.path)  # pickle weights refused before the search writes anything
    base = base_of(source, o.original_context)
    _, target = resolve_target(base, o.factor, o.target_context)
    out = Path(o.out) if o.out is not None else default_out(o.model, o.method, target)
    dev, dtype = pick_device(o.device)
    record = {"model": o.model, "method": o.method, "target_context": target, "original_context": base.original_context,
              "rope_theta": base.rope_theta, "n_pairs": base.n_pairs, **settings.__dict__, "seed": o.seed,
              "documents": o.documents, "text": o.text, "short": o.short, "short_max": o.short_max,
              "max_factor": o.max_factor, "critical_dim": o.critical_dim,
              "device": f"{dev.type}/{str(dtype).replace('torch.', '')}"}
    _long_phase(o, base, target)  # refuses a bad --critical-dim / --max-factor before the model loads
    if o.short:
        longrope.short_phase(base, target, [1.0] * base.n_pairs, o.short_max)
    path = out / checkpoint.NAME
    if o.resume:
        data = checkpoint.load(path, record)
    elif path.exists() and not o.force:
        raise OutputError(f"{out} already holds a search", "pass --resume to continue it, or --force to start over")
    else:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory", "pass a directory path")
        data = checkpoint.new(record)
        for stale in (report.FACTORS, report.LOG, report.PLOT):  # --force: no output of the old search survives
            (out / stale).unlink(missing_ok=True)
        checkpoint.write_json(path, data)
    return _run(o, settings, base, target, out, data, hf_checkpoint(source, progress=o.progress), runtime,
                estimate, pool)


def _run(o, settings, base: BaseRope, target: int, out: Path, data: dict, hf_dir: Path,
         runtime=None, estimate=None, given=None) -> SearchResult:
    from ropeconvert import fanout
    from ropeconvert.validators.runtime import load

    started = time.perf_counter()
    if not o.progress:  # --quiet: transformers' own "Loading weights" bar too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    ref = fanout.ModelRef(str(hf_dir), device=o.device, original_context=o.original_context)
    fan = fanout.Workers.of(o)
    if given is not None:  # the caller's workers (they already hold the model)
        return _phases(o, settings, base, target, out, data, hf_dir, runtime, estimate, given, ref, started)
    if runtime is None and not fan.wanted:  # with workers each worker loads the model; here only the tokenizer
        runtime = load(hf_dir, device=o.device, original_context=o.original_context)
    pool = fanout.pool(fan, {ref: runtime} if runtime is not None else None,
                       say=(lambda line: print(line, file=sys.stderr)) if o.progress else (lambda line: None))
    try:
        return _phases(o, settings, base, target, out, data, hf_dir, runtime, estimate, pool, ref, started)
    finally:
        pool.close()


def _phases(o, settings, base, target, out, data, hf_dir, runtime, estimate, pool, ref, started) -> SearchResult:
    from ropeconvert.convert.methods.longrope import su_attention_factor
    from ropeconvert.convert.search.fitness import describe_job, fitness_job
    from ropeconvert.validators import corpus

    tokenizer = runtime.tokenizer if runtime is not None else _tokenizer(hf_dir)
    bos = getattr(tokenizer, "bos_token_id", None)
    docs = pick_documents(tokenizer, corpus.load(o.text), o.documents, target, o.text)
    names = [n for n, _ in docs]
    long_phase = _long_phase(o, base, target)
    if o.method == "longrope":
        samples = [text_sample(n, ids, target, bos) for n, ids in docs]
    else:
        samples = needle_samples(tokenizer, docs, target, bos, o.seed)
    described = runtime.describe() if runtime is not None else next(pool.imap(describe_job, [(ref,)]))
    meta = {"documents": names, "attention_factor": su_attention_factor(target / base.original_context,
                                                                        base.original_context),
            "runtime": described, "phases": {}}
    save = lambda: checkpoint.write_json(out / checkpoint.NAME, data)  # noqa: E731
    generations_left = o.stop_after
    plan = [(long_phase, samples)]
    result_phases = {}
    for index in range(2 if o.short else 1):
        if index == 1:  # the short search needs the finished long factors (they go into the same spec)
            best_long = best_record(data["phases"]["long"]["state"])
            phase = longrope.short_phase(base, target, best_long["factors"], o.short_max)
            plan.append((phase, [text_sample(n, ids, base.original_context, bos) for n, ids in docs]))
        phase, phase_samples = plan[index]
        meta["phases"][phase.name] = {"fitness": phase.fitness, "length": phase.length, **phase.info}
        pdata = data["phases"].setdefault(phase.name, {"references": {},
                                                       "state": fresh_state([o.seed, index])})
        shared = pool.share(phase_samples)  # sent to each worker once, not with every candidate

        def many(specs, sh=shared):  # (fitness, seconds) per spec, in order, from whichever worker is free
            return pool.imap(fitness_job, [(ref, base, sh, spec) for spec in specs])

        evaluations = len(phase.references) + settings.budget
        _references(phase, pdata, many, save, (lambda t, n=evaluations: estimate(t, n)) if estimate else None)
        bar = _bar(o.progress, settings.budget, len(pdata["state"]["evaluations"]), phase.name)
        evo = Evolution(phase.space, phase.seeds, settings, None, phase.expand, lambda st: save(), pdata["state"],
                        progress=bar.step, evaluate_many=lambda gs, p=phase, m=many: m([p.spec_for(g) for g in gs]))
        while not pdata["state"]["done"] and (generations_left is None or generations_left > 0):
            evo.run(stop_after=1)
            report.write_log(out, data, meta)
            generations_left = None if generations_left is None else generations_left - 1
        bar.close()
        result_phases[phase.name] = report.phase_summary(pdata)
        if not pdata["state"]["done"]:
            break
    complete = all(data["phases"].get(p, {}).get("state", {}).get("done") for p in
                   (["long", "short"] if o.short else ["long"]))
    log = report.write_log(out, data, meta)
    png = report.plot(out, data, meta)
    factors = report.write_factors(out, data, meta) if complete else None
    return SearchResult(out, complete, factors, log, png, result_phases, names, time.perf_counter() - started)


def _tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


def _long_phase(o: SearchOptions, base: BaseRope, target: int) -> longrope.Phase:
    if o.method == "longrope":
        if o.critical_dim is not None:
            raise SpecError("--critical-dim applies to --method longrope2", "drop it, or pass --method longrope2")
        return longrope.long_phase(base, target, o.max_factor)
    if o.max_factor is not None:
        raise SpecError("--max-factor applies to --method longrope (longrope2 searches [s, 2s])", "drop it")
    return longrope2.long_phase(base, target, o.critical_dim)


def _references(phase, pdata: dict, many, save, first=None) -> None:
    """PI, NTK, YaRN (or the original rope for short factors) with their own attention factors, once each;
    `first(seconds)` hears how long the first one took."""
    todo = [(name, spec) for name, spec in phase.references.items() if name not in pdata["references"]]
    for (name, spec), (value, seconds) in zip(todo, many([spec for _, spec in todo])):
        pdata["references"][name] = {
            "fitness": value if math.isfinite(value) else None,
            "seconds": round(seconds, 3),
            "factors": None if spec is None else [float(f) for f in spec.freq_factors(phase.length)],
            "attention_factor": 1.0 if spec is None else spec.attention_factor}
        save()
        if first is not None:
            first(pdata["references"][name]["seconds"])
            first = None


def pick_documents(tokenizer, documents, k: int, need: int, text: str) -> list[tuple[str, list[int]]]:
    """The first k documents (corpus order) with at least `need` tokens; only a prefix of a long book is
    tokenised (8 characters per token is far more than English needs)."""
    chosen = []
    for doc in documents:
        ids = tokenizer(doc.text[:need * 8], add_special_tokens=False).input_ids
        if len(ids) < need and len(doc.text) > need * 8:
            ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        if len(ids) >= need:
            chosen.append((doc.name, list(ids)))
        if len(chosen) == k:
            return chosen
    raise InputError(f"only {len(chosen)} document(s) of {text!r} have the {need} tokens a fitness sample needs, "
                     f"--documents asks for {k}", "lower --documents or --target-context, or pass --text FILE|DIR")


def default_out(model: str, method: str, target: int) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name).strip("-.") or "model"
    stem = re.sub(r"\.gguf$", "", stem)
    size = f"{target // 1024}k" if target % 1024 == 0 else str(target)
    return Path(f"{stem}-{method}-search-{size}")


class _bar:
    """tqdm over evaluations, with the best fitness so far."""

    def __init__(self, enabled: bool, total: int, done: int, name: str):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(total=total, initial=done, desc=f"search {name}", unit="eval", disable=not enabled,
                         leave=False)
        self.best = float("inf")

    def step(self, record: dict) -> None:
        if record["fitness"] is not None:
            self.best = min(self.best, record["fitness"])
        self.tqdm.set_postfix_str(f"best {self.best:.4g}")
        self.tqdm.update(1)

    def close(self) -> None:
        self.tqdm.close()
