"""LongRoPE factor search on the real SmolLM2-135M past its trained 8192 tokens, checked on held-out text (not a test).

1. Runs the search (`ropeconvert search`'s library call) on `--documents` fitness documents; PI, NTK and YaRN are
   evaluated in the same run on the same documents (each as it exports: its own attention factor).
2. Scores the found factors (as `ropeconvert MODEL --method longrope --factors factors.json` exports them) and YaRN on
   held-out documents — corpus documents the fitness never saw — one window of the target length each, the same
   protocol as the fitness. `--heldout-all` adds PI, NTK and the unscaled base model.
3. Prints the figures and writes OUT/bench.json; the curve is OUT/search.png (best fitness vs evaluations with the
   PI/NTK/YaRN lines).

CPU setting (default; a 10k forward is 1–3 min on 2 shared cores): 10240 tokens (s = 1.25), 1 fitness document,
population 10, budget 30 evaluations, 2 held-out documents:

    nohup nice -n 10 python bench/search_longrope.py --out out/bench-search-10k > out/bench-search-10k.log 2>&1 &

GPU goal (`--gpu`): 2× (16384 tokens), 5 fitness documents, population 32, budget 250 (≤ 250 evaluations),
5 held-out documents, from the Shakespeare corpus (Austen has only 6 books). An interrupted run continues with
--resume (the search checkpoint; held-out scoring is redone).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

CPU = dict(target=10240, documents=1, population=10, budget=30, heldout=2, corpus="austen")
GPU = dict(target=16384, documents=5, population=32, budget=250, heldout=5, corpus="shakespeare")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gpu", action="store_true", help="the GPU goal's settings (16k, budget 250, population 32)")
    for key, kind in (("target", int), ("documents", int), ("population", int), ("budget", int), ("heldout", int),
                      ("corpus", str)):
        ap.add_argument(f"--{key}", type=kind, default=None)
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/bench-search"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--heldout-all", action="store_true", help="also PI, NTK and the unscaled model on held-out text")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args()
    cfg = {**(GPU if args.gpu else CPU), **{k: v for k, v in vars(args).items() if k in CPU and v is not None}}

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.search.fitness import sample_nll, text_sample
    from ropeconvert.convert.search.run import SearchOptions, pick_documents, search
    from ropeconvert.validators import corpus
    from ropeconvert.validators.runtime import load, set_rope

    wall = time.perf_counter()
    result = search(SearchOptions(
        args.model, method="longrope", target_context=cfg["target"], budget=cfg["budget"],
        population=cfg["population"], generations=args.generations, patience=args.patience, seed=args.seed,
        out=args.out, resume=args.resume and (args.out / "checkpoint.json").exists(), force=not args.resume,
        documents=cfg["documents"], text=cfg["corpus"], progress=sys.stderr.isatty()))
    search_wall = time.perf_counter() - wall
    factors = json.loads((args.out / "factors.json").read_text())
    log = json.loads((args.out / "search_log.json").read_text())["phases"]["long"]

    # held-out: the next documents of the corpus long enough for one window, never the fitness ones
    rt = load(args.model)
    docs = pick_documents(rt.tokenizer, corpus.load(cfg["corpus"]), len(result.documents) + cfg["heldout"],
                          cfg["target"], cfg["corpus"])
    heldout = [(n, ids) for n, ids in docs if n not in result.documents][:cfg["heldout"]]
    samples = [text_sample(n, ids, cfg["target"], rt.bos_id) for n, ids in heldout]
    specs = {"found": build_spec("longrope", rt.base, factors=str(args.out / "factors.json")),
             "YaRN": build_spec("yarn", rt.base, target_context=cfg["target"])}
    if args.heldout_all:
        specs.update(PI=build_spec("linear", rt.base, target_context=cfg["target"]),
                     NTK=build_spec("ntk", rt.base, target_context=cfg["target"]), unscaled=None)
    held: dict[str, dict] = {}
    for name, spec in specs.items():
        start = time.perf_counter()
        set_rope(rt.model, spec, rt.base)
        per_doc = [math.exp(v) for v in sample_nll(rt.model, samples)]
        held[name] = {"mean": sum(per_doc) / len(per_doc), "per_document": dict(zip([n for n, _ in heldout], per_doc)),
                      "seconds": round(time.perf_counter() - start, 1)}
        print(f"held-out {name}: {held[name]['mean']:.4f} {held[name]['per_document']}", flush=True)

    refs = log["summary"]["references"]
    report = {
        "settings": {**cfg, "model": args.model, "seed": args.seed, "generations": args.generations,
                     "patience": args.patience, "threads": torch.get_num_threads(), "device": str(rt.device)},
        "fitness_documents": result.documents, "heldout_documents": [n for n, _ in heldout],
        "fitness": {"PI": refs["PI"], "NTK": refs["NTK"], "YaRN": refs["YaRN"], "best": factors["fitness"]},
        "best_at_evaluation": 1 + min(range(len(log["evaluations"])), key=lambda i: log["evaluations"][i]["fitness"]
                                      if log["evaluations"][i]["fitness"] is not None else math.inf),
        "evaluations": log["summary"]["evaluations"], "generations": log["summary"]["generations"],
        "stop_reason": log["summary"]["stop_reason"], "seconds_per_evaluation": round(
            log["summary"]["search_seconds"] / max(1, log["summary"]["evaluations"]), 1),
        # evaluation time from the log (survives --resume); this run's wall time is only the search's part now
        "search_evaluation_seconds": round(log["summary"]["search_seconds"]
                                           + sum(r["seconds"] for r in log["references"].values()), 1),
        "search_wall_seconds_this_run": round(search_wall, 1), "heldout": held,
        "heldout_found_le_yarn": held["found"]["mean"] <= held["YaRN"]["mean"],
        "total_wall_seconds": round(time.perf_counter() - wall, 1), "long_factor": factors["long_factor"],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    f = report["fitness"]
    print(f"\nLongRoPE search, {args.model}: {rt.base.original_context} → {cfg['target']} tokens "
          f"(s = {cfg['target'] / rt.base.original_context:g}), {report['evaluations']} evaluations "
          f"(population {cfg['population']}, budget {cfg['budget']}), {report['stop_reason']}")
    print(f"fitness ppl on {', '.join(result.documents)}: PI {f['PI']:.4f}  NTK {f['NTK']:.4f}  YaRN {f['YaRN']:.4f}  "
          f"best {f['best']:.4f} (evaluation {report['best_at_evaluation']})")
    print(f"held-out ppl on {', '.join(report['heldout_documents'])}: "
          + "  ".join(f"{k} {v['mean']:.4f}" for k, v in held.items())
          + f"  → found/YaRN = {held['found']['mean'] / held['YaRN']['mean']:.4f}")
    print(f"time: search evaluations {report['search_evaluation_seconds']:.0f} s incl. the 3 references "
          f"({report['seconds_per_evaluation']} s/evaluation); this run's wall {report['total_wall_seconds']:.0f} s "
          f"(search part {report['search_wall_seconds_this_run']:.0f} s); curve {args.out / 'search.png'}")


if __name__ == "__main__":
    main()
