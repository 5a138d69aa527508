"""Serial vs Ray workers for a tiny LongRoPE search on this machine (not a test; issue #22's honest figure).

The same search (a random 4-layer llama, hidden 256, trained at 1024 tokens, searched for 4096, population 8, 2 generations:
8 + 2·4 = 16 evaluations + 3 references, 2 fitness documents) runs serially (torch on every core) and with
`--workers N` (a local Ray instance, the cores split between the actors), in the same run. It prints the wall times,
the per-evaluation cost, the ratio, and the expected scaling on paper: E evaluations of t seconds on N workers take
about (references + Σ over generations of ⌈children / N⌉) · t, plus each worker's model load and Ray's start.
The results must be identical (checked: same trajectory and factor file).

    python bench/fanout_search.py --workers 2 [--append-results]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

POPULATION, GENERATIONS, ORIGINAL, TARGET = 8, 2, 1024, 4096


def run(model: Path, texts: Path, out: Path, workers: int | None):
    from ropeconvert.convert.search.run import SearchOptions, search

    start = time.perf_counter()
    result = search(SearchOptions(str(model), target_context=TARGET, documents=2, text=str(texts), out=out,
                                  population=POPULATION, generations=GENERATIONS, seed=0, progress=False,
                                  workers=workers))
    seconds = time.perf_counter() - start
    state = json.loads((out / "checkpoint.json").read_text())["phases"]["long"]
    evals = state["state"]["evaluations"]
    per = [r["seconds"] for r in evals] + [r["seconds"] for r in state["references"].values()]
    trajectory = [(r["genes"], r["fitness"]) for r in evals]
    return {"seconds": seconds, "evaluations": len(per), "median_eval": sorted(per)[len(per) // 2],
            "trajectory": trajectory, "factors": (result.factors or out / "factors.json").read_bytes(),
            "generations": [sum(1 for r in evals if r["generation"] == g) for g in range(GENERATIONS + 1)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()
    import torch

    from conftest import make_small_tokenizer, make_tiny_model
    from ropeconvert.validators import corpus

    root = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    books = corpus.load("austen")
    tok = make_small_tokenizer(root / "tok", books[0].text[:200_000])
    model = make_tiny_model(root / "tiny", tok, original_context=ORIGINAL, head_dim=64, layers=4, intermediate=1024)
    texts = root / "texts"
    texts.mkdir()
    for doc in books[1:4]:
        (texts / f"{doc.name}.txt").write_text(doc.text[:40000], encoding="utf-8")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    serial = run(model, texts, root / "serial", None)
    fanned = run(model, texts, root / "fanned", args.workers)
    assert fanned["trajectory"] == serial["trajectory"] and fanned["factors"] == serial["factors"], "results differ"
    t = serial["median_eval"]
    rounds = sum(math.ceil(n / args.workers) for n in [3] + serial["generations"])  # references, then generations
    lines = [
        f"Tiny LongRoPE search ({serial['evaluations']} evaluations: 3 references + generations of "
        f"{'/'.join(map(str, serial['generations']))}; 4-layer llama of hidden 256, {TARGET} tokens, 2 documents) on {cores} CPU "
        f"cores, {time.strftime('%Y-%m-%d')}:",
        "",
        "| run | wall s | median s per evaluation | vs serial |",
        "|---|---:|---:|---:|",
        f"| serial ({cores} torch threads) | {serial['seconds']:.1f} | {serial['median_eval']:.3f} | 1.00 |",
        f"| {args.workers} Ray workers ({max(1, cores // args.workers)} thread each) | {fanned['seconds']:.1f} | "
        f"{fanned['median_eval']:.3f} | {serial['seconds'] / fanned['seconds']:.2f}× |",
        "",
        f"Identical results (trajectory and factors.json). On paper, with t = {t:.3f} s per evaluation: serial "
        f"{serial['evaluations']}·t = {serial['evaluations'] * t:.1f} s; {args.workers} workers about {rounds}·t = "
        f"{rounds * t:.1f} s of evaluations (a generation waits for its slowest child) plus Ray's start and one "
        "model load per worker. The paper's full run (1344 evaluations, 32 children per generation) on 8 GPUs: "
        "about 1344/8 = 168 evaluation times instead of 1344.",
    ]
    print("\n".join(lines))
    if args.append_results:
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n## Fan-out: serial vs Ray workers (bench/fanout_search.py)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
