"""`ropeconvert search --method dpe`: DPE's effective-length detection (reference/methods.md §3.1) on the model.

1. Key-dimension selection once (convert/search/dpe_select.py): the top-k pairs of each (layer, head), by default
   all of them (the reference keeps 3/4; on SmolLM2 that loses the pass key even under Self-Extend's map).
2. The pairs are split into G even groups; the candidate scales are g = N / ℓ, ℓ one of the candidate effective
   lengths (default N, N/2, … down to W). Every evaluation scores 4-needle retrieval at the target length N
   (convert/search/dpe_score.py) under a whole map, retrieval first, then the lower needle NLL.
3. Start: every group at one scale — the best uniform candidate (Self-Extend on the selected pairs), or
   --fixed-scale g (the reference fixes the other groups at TEST_MAX/PRETRAIN·2).
4. One coordinate pass: each group in turn takes every candidate with the other groups at the current map, and
   keeps the candidate only when it beats the current map. The reference sweeps each group against the fixed
   scale and joins the per-group winners unscored; on SmolLM2 that join, never evaluated as a whole, lost the
   pass key that Self-Extend finds (README "DPE and Self-Extend"). Here the result is always a map that was scored,
   and it scores no worse than the start.
5. The map is written as dpe_map.json, the main command's --dpe-map input, with every evaluation in
   dpe_search.json and search.png.

The model loads once; a candidate is a position map attached to it (validators.dpe_attention.attach), never a
reload. The log is written after every evaluation and is the cache: --resume continues an interrupted sweep.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ropeconvert.convert.methods.dpe import MAP_FORMAT
from ropeconvert.convert.methods.selfextend import default_window
from ropeconvert.convert.position_map import PositionMap, even_boundaries
from ropeconvert.convert.search.checkpoint import write_json
from ropeconvert.convert.search.dpe_select import top_k
from ropeconvert.convert.search.options import SearchOptions
from ropeconvert.convert.spec import resolve_target
from ropeconvert.errors import InputError, OutputError, SpecError

MAP, LOG, PLOT = "dpe_map.json", "dpe_search.json", "search.png"


@dataclass
class DpeResult:
    out: Path
    map: Path
    log: Path
    plot: Path
    scales: list[float]
    evaluations: int
    new_evaluations: int
    retrieved: float = 0.0  # the final map's score
    nll: float | None = None
    seconds: float = 0.0
    groups: list[dict] = field(default_factory=list)


def plan(o: SearchOptions, base) -> tuple[int, int, tuple[int, ...], list[float], float | None, int]:
    """(target, window, boundaries, candidate scales, fixed start scale or None, topk), refusing bad numbers before
    any load."""
    from ropeconvert.validators.options import parse_list

    _, target = resolve_target(base, o.factor, o.target_context)
    window = default_window(base) if o.window is None else o.window
    PositionMap.build(window=window, boundaries=(0, base.n_pairs), scales=(1.0,), original_context=base.original_context)
    bounds = even_boundaries(base.n_pairs, o.groups)
    lengths = parse_list("--lengths", o.lengths) if isinstance(o.lengths, str) else o.lengths
    lengths = lengths or tuple(target >> i for i in range(32) if (target >> i) >= window)
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or not window <= n <= target:
            raise SpecError(f"--lengths: {n!r} is not an effective length in [{window}, {target}] (window … target)",
                            f"e.g. --lengths {target},{target // 2},{target // 4}")
    candidates = sorted({round(target / n, 6) for n in lengths})
    fixed = None if o.fixed_scale is None else float(o.fixed_scale)
    if fixed is not None:
        PositionMap.build(window=window, boundaries=bounds, scales=[fixed] * o.groups,
                          original_context=base.original_context)
    topk = o.topk if o.topk is not None else base.n_pairs
    top_k(np.zeros((1, 1, base.n_pairs)), topk)
    if o.samples < 1:
        raise SpecError(f"--samples must be at least 1, got {o.samples}")
    needed = evaluations_needed(candidates, o.groups, fixed)
    if o.budget is not None and o.budget < needed:
        start = "every uniform map" if fixed is None else f"the all-{fixed:g} map"
        raise SpecError(f"the sweep needs {needed} evaluations ({start}, then {o.groups} groups × the other "
                        f"candidates of {len(candidates)}) but --budget is {o.budget}",
                        "raise --budget, or lower --groups or pass fewer --lengths")
    return target, window, bounds, candidates, fixed, topk


def evaluations_needed(candidates: list[float], groups: int, fixed: float | None) -> int:
    """The start (every uniform candidate, or the one all-`fixed` map), then per group the candidates other than
    the group's current scale (which is a candidate unless it is a fixed scale outside them)."""
    if fixed is None:
        return len(candidates) + groups * (len(candidates) - 1)
    return 1 + groups * (len(candidates) - (fixed in candidates))


def search(o: SearchOptions, source=None, runtime=None, estimate=None, pool=None) -> DpeResult:
    """Run the detection; `source`, a loaded `runtime` of it and `estimate` as in run.search. With --workers the
    maps of each sweep (the uniform starts, then each group's candidates) are scored in parallel on Ray workers
    (ropeconvert/fanout.py); the pass, and so the result, is the serial one."""
    from ropeconvert.convert.search.run import base_of
    from ropeconvert.formats.source import hf_checkpoint, resolve
    from ropeconvert.formats.tensors import require_safetensors

    source = source or resolve(o.model, progress=o.progress)
    require_safetensors(source.path)  # pickle weights refused before the search writes anything
    base = base_of(source, o.original_context)
    target, window, bounds, candidates, fixed, topk = plan(o, base)
    out = Path(o.out) if o.out is not None else Path(f"{Path(o.model.rstrip('/')).name}-dpe-search-{target}")
    settings = {"model": o.model, "target_context": target, "original_context": base.original_context,
                "window": window, "boundaries": list(bounds), "candidates": candidates, "fixed_scale": fixed,
                "topk": topk, "samples": o.samples, "seed": o.seed, "text": o.text,
                "strategy": "start, then one coordinate pass"}
    log = _start_log(out / LOG, settings, o.resume, o.force)
    return _run(o, base, settings, log, out, hf_checkpoint(source, progress=o.progress), runtime, estimate, pool)


def _start_log(path: Path, settings: dict, resume: bool, force: bool) -> dict:
    if path.exists() and resume:
        from ropeconvert.convert.search.checkpoint import MAX_BYTES
        from ropeconvert.formats.safe_io import check_depth, read_json

        fix = f"delete {path} (or pass --force) to start the search over"
        data = read_json(path, "DPE search log", fix, MAX_BYTES)  # any depth or size of JSON: one InputError
        check_depth(data, f"DPE search log {path}", fix)
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict) \
                or not isinstance(data.get("evaluations"), list):
            raise InputError(f"DPE search log {path} is corrupt (not a ropeconvert DPE search log)", fix)
        differ = sorted(k for k in settings if data.get("settings", {}).get(k) != settings[k])
        if differ:
            raise InputError(f"{path} was made with other settings ({', '.join(differ)})",
                             "resume with the same options, or pass --force to start over")
        return data
    if path.exists() and not force:
        raise OutputError(f"{path.parent} already holds a DPE search", "pass --resume to continue it, or --force")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"--out {path.parent} exists and is not a directory", "pass a directory path")
    for stale in (MAP, PLOT):
        (path.parent / stale).unlink(missing_ok=True)
    return {"format": "ropeconvert.dpe_search/1", "settings": settings, "evaluations": []}


def _run(o: SearchOptions, base, settings: dict, log: dict, out: Path, hf_dir: Path, runtime=None,
         estimate=None, given=None) -> DpeResult:
    from ropeconvert import fanout
    from ropeconvert.validators.runtime import load

    started = time.perf_counter()
    if not o.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    fan = fanout.Workers.of(o)
    ref = fanout.ModelRef(str(hf_dir), device=o.device, original_context=o.original_context)  # = auto's replica
    rt = runtime or (None if fan.wanted else load(hf_dir, device=o.device, original_context=base.original_context))
    pool = given or fanout.pool(fan, {ref: rt} if rt is not None else None,
                                say=(lambda line: print(line, file=sys.stderr)) if o.progress else (lambda line: None))
    try:
        return _detect(o, base, settings, log, out, rt, estimate, pool, ref, started, hf_dir)
    finally:
        if given is None:  # the caller's workers (--method auto's) stay theirs
            pool.close()
        if runtime is None and rt is not None:
            rt.close()
        elif runtime is not None:  # the caller's model goes back to its own attention
            from ropeconvert.validators.dpe_attention import detach

            detach(runtime.model)


def _detect(o, base, settings, log, out, rt, estimate, pool, ref, started, hf_dir) -> DpeResult:
    from tqdm.auto import tqdm

    from ropeconvert.convert.search import dpe_score, dpe_select
    from ropeconvert.validators import corpus

    target, window, fixed = settings["target_context"], settings["window"], settings["fixed_scale"]
    groups = len(settings["boundaries"]) - 1
    tokenizer = rt.tokenizer if rt is not None else _tokenizer(hf_dir)
    if "selected" not in log:  # the selection is part of the log: a resumed sweep uses the same pairs
        mask, scores = next(pool.imap(dpe_select.select_job, [(ref, settings["topk"], o.text,
                                                    min(2048, base.original_context), o.progress)]))
        log["selected"] = PositionMap.build(window=window, boundaries=(0, base.n_pairs), scales=(1.0,),
                                            original_context=base.original_context, selected=mask).to_dict()
        log["pair_scores_mean"] = [float(v) for v in scores.mean(axis=(0, 1))]
    selected = PositionMap.from_dict(log["selected"]).selected
    haystack = "\n\n".join(d.text for d in corpus.load(o.text))
    prompts = pool.share([dpe_score.build(tokenizer, haystack, target, o.seed, i) for i in range(o.samples)])
    done = {tuple(e["scales"]): e for e in log["evaluations"]}
    candidates, bounds = settings["candidates"], settings["boundaries"]
    needed = evaluations_needed(candidates, groups, fixed)
    counter, seen = {"new": 0}, set()
    with tqdm(total=needed, desc="dpe detection", unit="eval", disable=not o.progress, leave=False) as bar:

        def prefetch(maps: list[list[float]]) -> None:
            """Score the maps not yet in the log, in parallel where there are workers, logged in order."""
            todo = list(dict.fromkeys(tuple(m) for m in maps if tuple(m) not in done))
            jobs = [(ref, PositionMap.build(window=window, boundaries=bounds, scales=list(m),
                                            original_context=base.original_context, selected=selected), prompts)
                    for m in todo]
            for key, (retrieved, nll, seconds) in zip(todo, pool.imap(dpe_score.map_job, jobs)):
                done[key] = {"scales": list(key), "retrieved": retrieved,
                             "nll": nll if math.isfinite(nll) else None, "seconds": round(seconds, 3)}
                log["evaluations"].append(done[key])
                counter["new"] += 1
                write_json(out / LOG, log)
                if estimate is not None and counter["new"] == 1:
                    estimate(done[key]["seconds"], needed - len(seen))

        def evaluate(scales: list[float]) -> dict:
            key = tuple(scales)
            prefetch([list(key)])
            if key not in seen:  # the pass asks again for maps it already has (the current map, the start)
                seen.add(key)
                bar.update(1)
            return done[key]

        best, uniform, rows = _coordinate_search(evaluate, candidates, groups, fixed, bounds, prefetch)
    final = done[tuple(best)]
    pm = PositionMap.build(window=window, boundaries=bounds, scales=best,
                           original_context=base.original_context, selected=selected)
    log["result"] = {"scales": best, "retrieved": final["retrieved"], "nll": final["nll"], "uniform": uniform,
                     "groups": rows, "effective_lengths": [round(x, 1) for x in pm.effective_lengths(target)]}
    write_json(out / LOG, log)
    write_json(out / MAP, {"format": MAP_FORMAT, "target_context": target, "position_map": pm.to_dict(),
                           "search": {"retrieved": final["retrieved"], "nll": final["nll"], "log": LOG}})
    png = _plot(out / PLOT, settings, uniform, rows)
    return DpeResult(out, out / MAP, out / LOG, png, best, len(done), counter["new"], final["retrieved"], final["nll"],
                     time.perf_counter() - started, rows)


def _key(record: dict) -> tuple[float, float]:
    nll = record["nll"] if record["nll"] is not None else math.inf
    return (-record["retrieved"], nll)


def _coordinate_search(evaluate, candidates: list[float], groups: int, fixed: float | None,
                       bounds: list[int], prefetch=lambda maps: None) -> tuple[list[float], list[dict], list[dict]]:
    """The start map, then each group swept with the others at the current map; a group moves only to a candidate
    that beats the current map (retrieval, then needle NLL). Returns (map, uniform rows, per-group rows).
    `prefetch(maps)` hears each sweep's maps before they are asked for one by one (to score them in parallel)."""
    starts = candidates if fixed is None else [fixed]
    prefetch([[g] * groups for g in starts])
    uniform = [{"scale": g, **_row(evaluate([g] * groups))} for g in starts]
    current = [min(starts, key=lambda g: (_key(evaluate([g] * groups)), g))] * groups
    rows = []
    for k in range(groups):
        prefetch([current] + [current[:k] + [g] + current[k + 1:] for g in candidates])
        here = evaluate(current)
        tried = {current[k]: here}
        for g in candidates:
            if g != current[k]:
                tried[g] = evaluate(current[:k] + [g] + current[k + 1:])
        g = min(tried, key=lambda c: (_key(tried[c]), c != current[k], c))
        rows.append({"group": k, "pairs": bounds[k:k + 2], "others": current[:k] + [None] + current[k + 1:],
                     "scale": g, **_row(tried[g]),
                     "tried": [{"scale": c, **_row(r)} for c, r in sorted(tried.items())]})
        current = current[:k] + [g] + current[k + 1:]
    return current, uniform, rows


def _row(record: dict) -> dict:
    return {"retrieved": record["retrieved"], "nll": record["nll"]}


def _plot(path: Path, settings: dict, uniform: list[dict], rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    curves = [("all groups (start)", uniform, "k")] if len(uniform) > 1 else []
    curves += [(f"pairs {r['pairs'][0]}–{r['pairs'][1] - 1}", r["tried"], None) for r in rows]
    for label, tried, color in curves:
        gs = [t["scale"] for t in tried]
        ax1.plot(gs, [t["retrieved"] for t in tried], marker="o", label=label, color=color)
        ax2.plot(gs, [t["nll"] if t["nll"] is not None else math.nan for t in tried], marker="o", label=label,
                 color=color)
    for ax, name in ((ax1, "needles retrieved"), (ax2, "needle NLL")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scale g of the probed group (others at the current map; start: all groups)")
        ax.set_ylabel(name)
    ax1.legend(fontsize=7)
    fig.suptitle(f"DPE effective-length detection at {settings['target_context']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)

