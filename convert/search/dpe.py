"""`ropeconvert search --method dpe`: DPE's effective-length detection (reference/methods.md §3.1) on the model.

1. Key-dimension selection once (convert/search/dpe_select.py): the top-k pairs of each (layer, head).
2. The pairs are split into G even groups. With every group at the fixed scale (2·s, as the reference's
   TEST_MAX/PRETRAIN·2), each group in turn takes every candidate scale g = N / ℓ, ℓ one of the candidate
   effective lengths (default N, N/2, … down to W), and the 4-needle retrieval at the target length N is scored
   (convert/search/dpe_score.py). The all-fixed setting is one evaluation shared by every group.
3. Each group gets its best scale (retrieval first, then the lower needle NLL); the map is written as
   dpe_map.json, the main command's --dpe-map input, with every evaluation in dpe_search.json and search.png.

The model loads once; a candidate is a position map attached to it (validators.dpe_attention.attach), never a
reload. The log is written after every evaluation and is the cache: --resume continues an interrupted sweep.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ropeconvert.convert.methods.dpe import MAP_FORMAT
from ropeconvert.convert.methods.selfextend import default_window
from ropeconvert.convert.position_map import PositionMap, even_boundaries
from ropeconvert.convert.search.checkpoint import write_json
from ropeconvert.convert.search.dpe_select import top_k
from ropeconvert.convert.spec import resolve_target
from ropeconvert.errors import InputError, OutputError, SpecError, UnsupportedError

MAP, LOG, PLOT = "dpe_map.json", "dpe_search.json", "search.png"


@dataclass
class DpeOptions:
    model: str
    target_context: int | None = None
    factor: float | None = None
    window: int | None = None
    groups: int = 8
    topk: int | None = None  # default 3/4 of the pairs (DPE: 48 of 64)
    lengths: tuple[int, ...] | None = None  # candidate effective lengths; g = N / ℓ
    fixed_scale: float | None = None  # the other groups' scale while one is probed (default 2·s)
    samples: int = 1  # needle prompts per evaluation
    budget: int | None = None  # evaluations at most
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    force: bool = False
    text: str = "austen"
    original_context: int | None = None
    device: str | None = None
    progress: bool = True


@dataclass
class DpeResult:
    out: Path
    map: Path
    log: Path
    plot: Path
    scales: list[float]
    evaluations: int
    new_evaluations: int
    seconds: float = 0.0
    groups: list[dict] = field(default_factory=list)


def plan(o: DpeOptions, base) -> tuple[int, int, tuple[int, ...], list[float], float, int]:
    """(target, window, boundaries, candidate scales, fixed scale, topk), refusing bad numbers before any load."""
    s, target = resolve_target(base, o.factor, o.target_context)
    window = default_window(base) if o.window is None else o.window
    PositionMap.build(window=window, boundaries=(0, base.n_pairs), scales=(1.0,), original_context=base.original_context)
    bounds = even_boundaries(base.n_pairs, o.groups)
    lengths = o.lengths or tuple(target >> i for i in range(32) if (target >> i) >= window)
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or not window <= n <= target:
            raise SpecError(f"--lengths: {n!r} is not an effective length in [{window}, {target}] (window … target)",
                            f"e.g. --lengths {target},{target // 2},{target // 4}")
    candidates = sorted({round(target / n, 6) for n in lengths})
    fixed = round(2 * s, 6) if o.fixed_scale is None else float(o.fixed_scale)
    PositionMap.build(window=window, boundaries=bounds, scales=[fixed] * o.groups, original_context=base.original_context)
    topk = o.topk if o.topk is not None else max(1, 3 * base.n_pairs // 4)
    top_k(np.zeros((1, 1, base.n_pairs)), topk)
    if o.samples < 1:
        raise SpecError(f"--samples must be at least 1, got {o.samples}")
    needed = 1 + sum(1 for g in candidates if g != fixed) * o.groups
    if o.budget is not None and o.budget < needed:
        raise SpecError(f"the sweep needs {needed} evaluations ({o.groups} groups × {len(candidates)} candidate "
                        f"scales, the all-{fixed:g} setting once) but --budget is {o.budget}",
                        "raise --budget, or lower --groups or pass fewer --lengths")
    return target, window, bounds, candidates, fixed, topk


def search(o: DpeOptions) -> DpeResult:
    from ropeconvert.convert.pipeline import base_rope
    from ropeconvert.formats.source import hf_checkpoint, resolve

    source = resolve(o.model, progress=o.progress)
    try:
        base = base_rope(source, o.original_context)
    except UnsupportedError as e:
        raise UnsupportedError(e.problem, "search from the base model") from None
    target, window, bounds, candidates, fixed, topk = plan(o, base)
    out = Path(o.out) if o.out is not None else Path(f"{Path(o.model.rstrip('/')).name}-dpe-search-{target}")
    settings = {"model": o.model, "target_context": target, "original_context": base.original_context,
                "window": window, "boundaries": list(bounds), "candidates": candidates, "fixed_scale": fixed,
                "topk": topk, "samples": o.samples, "seed": o.seed, "text": o.text}
    log = _start_log(out / LOG, settings, o.resume, o.force)
    return _run(o, base, settings, log, out, hf_checkpoint(source, progress=o.progress))


def _start_log(path: Path, settings: dict, resume: bool, force: bool) -> dict:
    if path.exists() and resume:
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
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


def _run(o: DpeOptions, base, settings: dict, log: dict, out: Path, hf_dir: Path) -> DpeResult:
    from tqdm.auto import tqdm

    from ropeconvert.convert.search import dpe_score
    from ropeconvert.convert.search.dpe_select import select
    from ropeconvert.validators import corpus
    from ropeconvert.validators.dpe_attention import attach
    from ropeconvert.validators.runtime import load

    started = time.perf_counter()
    if not o.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    rt = load(hf_dir, device=o.device, original_context=base.original_context)
    target, window, fixed = settings["target_context"], settings["window"], settings["fixed_scale"]
    groups = len(settings["boundaries"]) - 1
    if "selected" not in log:  # the selection is part of the log: a resumed sweep uses the same pairs
        mask, scores = select(rt.model, rt.tokenizer, settings["topk"], text=o.text,
                              length=min(2048, base.original_context), progress=o.progress)
        log["selected"] = PositionMap.build(window=window, boundaries=(0, base.n_pairs), scales=(1.0,),
                                            original_context=base.original_context, selected=mask).to_dict()
        log["pair_scores_mean"] = [float(v) for v in scores.mean(axis=(0, 1))]
    selected = PositionMap.from_dict(log["selected"]).selected
    haystack = "\n\n".join(d.text for d in corpus.load(o.text))
    prompts = [dpe_score.build(rt.tokenizer, haystack, target, o.seed, i) for i in range(o.samples)]
    done = {tuple(e["scales"]): e for e in log["evaluations"]}
    todo = [[fixed] * groups] + [[g if j == k else fixed for j in range(groups)]
                                 for k in range(groups) for g in settings["candidates"] if g != fixed]
    new = 0
    with tqdm(total=len(todo), initial=sum(tuple(t) in done for t in todo), desc="dpe detection", unit="eval",
              disable=not o.progress, leave=False) as bar:
        for scales in todo:
            if tuple(scales) in done:
                continue
            t0 = time.perf_counter()
            pm = PositionMap.build(window=window, boundaries=settings["boundaries"], scales=scales,
                                   original_context=base.original_context, selected=selected)
            attach(rt.model, pm)
            retrieved, nll = dpe_score.score(rt.model, prompts)
            record = {"scales": scales, "retrieved": retrieved, "nll": nll if math.isfinite(nll) else None,
                      "seconds": round(time.perf_counter() - t0, 3)}
            log["evaluations"].append(record)
            done[tuple(scales)] = record
            new += 1
            write_json(out / LOG, log)
            bar.update(1)
    rt.close()
    best, per_group = _choose(settings, done)
    pm = PositionMap.build(window=window, boundaries=settings["boundaries"], scales=best,
                           original_context=base.original_context, selected=selected)
    log["result"] = {"scales": best, "groups": per_group,
                     "effective_lengths": [round(x, 1) for x in pm.effective_lengths(target)]}
    write_json(out / LOG, log)
    write_json(out / MAP, {"format": MAP_FORMAT, "target_context": target, "position_map": pm.to_dict(),
                           "search": {"retrieved": per_group, "log": LOG}})
    png = _plot(out / PLOT, settings, done)
    return DpeResult(out, out / MAP, out / LOG, png, best, len(done), new, time.perf_counter() - started, per_group)


def _key(record: dict) -> tuple[float, float]:
    nll = record["nll"] if record["nll"] is not None else math.inf
    return (-record["retrieved"], nll)


def _choose(settings: dict, done: dict) -> tuple[list[float], list[dict]]:
    """Per group, the candidate (or the fixed scale) with the best retrieval, then the lowest needle NLL."""
    fixed, groups = settings["fixed_scale"], len(settings["boundaries"]) - 1
    base = done[tuple([fixed] * groups)]
    best, rows = [], []
    for k in range(groups):
        tried = {fixed: base} | {g: done[tuple(g if j == k else fixed for j in range(groups))]
                                 for g in settings["candidates"] if g != fixed}
        g = min(tried, key=lambda c: (_key(tried[c]), c))
        best.append(g)
        rows.append({"group": k, "pairs": settings["boundaries"][k:k + 2], "scale": g,
                     "retrieved": tried[g]["retrieved"], "nll": tried[g]["nll"]})
    return best, rows


def _plot(path: Path, settings: dict, done: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed, groups = settings["fixed_scale"], len(settings["boundaries"]) - 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in range(groups):
        gs = sorted(set(settings["candidates"]) | {fixed})
        rec = [done[tuple(g if j == k else fixed for j in range(groups))] for g in gs]
        label = f"pairs {settings['boundaries'][k]}–{settings['boundaries'][k + 1] - 1}"
        ax1.plot(gs, [r["retrieved"] for r in rec], marker="o", label=label)
        ax2.plot(gs, [r["nll"] if r["nll"] is not None else math.nan for r in rec], marker="o", label=label)
    for ax, name in ((ax1, "needles retrieved"), (ax2, "needle NLL")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"scale g of the probed group (others {fixed:g})")
        ax.set_ylabel(name)
    ax1.legend(fontsize=7)
    fig.suptitle(f"DPE effective-length detection at {settings['target_context']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

