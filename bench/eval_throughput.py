"""Perplexity throughput and memory vs a bare transformers forward at the same length (not a test).

The anchor runs `model(input_ids)` (what a user would write; it materialises `[L, vocab]` logits), ours runs
`perplexity.token_nll` (decoder stack → chunked LM head → per-token NLL). Time: one subprocess loads the model
once and, after a warm-up of both at the full length, runs them in back-to-back pairs whose order alternates (ABBA),
so both see the same machine state; each side runs at least --repeats times, and at short lengths again until it
has run --min-seconds; the ratio is the median of the pairs' ratios (the ratio of the medians is kept too).
Memory: a fresh subprocess per mode runs one forward while a thread samples
resident memory every 2 ms (CPU), or reads `torch.cuda.max_memory_allocated` (CUDA); reported above the loaded
model. Printed: ours/anchor throughput (target ≥ 0.95) and the memory both use above the weights (ours should
grow O(L), the anchor's has an L × vocab term on top).

    python bench/eval_throughput.py --model smollm2-135m --lengths 2048,4096,8192
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

WORKER = r"""
import gc, json, os, statistics, sys, threading, time, torch
from ropeconvert.validators import runtime, perplexity
job, model, length, repeats, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
min_seconds, max_repeats = float(sys.argv[6]), 12
rt = runtime.load(model, device=None if device == "auto" else device)
ids = torch.randint(3, rt.model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
ids = ids.to(rt.device)
weights = sum(p.numel() * p.element_size() for p in rt.model.parameters())
cuda = rt.device.type == "cuda"

def run(mode, x):
    with torch.inference_mode():
        if mode == "anchor":
            out = rt.model(input_ids=x).logits[0, -1, 0].item()  # the user's forward: full [L, vocab] logits
        else:
            out = float(perplexity.token_nll(rt.model, x[0])[0].mean())
    if cuda:
        torch.cuda.synchronize()
    return out

for mode in ("anchor", "ours"):
    run(mode, ids[:, :64])  # warm-up: kernels, allocator
if job == "time":
    for mode in ("anchor", "ours"):  # and once at full length: the first long run pays the allocator's page faults
        run(mode, ids)
    times = {"anchor": [], "ours": []}
    # short lengths are repeated until each side has run min_seconds: one run there swings ±15% on a shared CPU.
    # Pairs alternate which side goes first (ABBA), so a machine that speeds up or slows down favours neither.
    while len(times["ours"]) < repeats or (sum(times["ours"]) < min_seconds and len(times["ours"]) < max_repeats):
        order = ("anchor", "ours") if len(times["ours"]) % 2 == 0 else ("ours", "anchor")
        for mode in order:
            t0 = time.perf_counter(); run(mode, ids); times[mode].append(time.perf_counter() - t0)
    print(json.dumps({m: {"seconds": statistics.median(t), "all": t} for m, t in times.items()}))
    sys.exit(0)

if cuda:
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
gc.collect()

def rss():  # resident bytes now (ru_maxrss would include the load's own peak)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

rss_before, peak_rss, done = rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak_rss[0] = max(peak_rss[0], rss()); time.sleep(0.002)

sampler = threading.Thread(target=sample, daemon=True); sampler.start()
run(job, ids)
done.set(); sampler.join()
peak = (torch.cuda.max_memory_allocated() - base) if cuda else max(peak_rss[0], rss()) - rss_before
print(json.dumps({"peak_extra": peak, "weights": weights, "device": str(rt.device)}))
"""


def measure(job: str, model: str, length: int, repeats: int, device: str, min_seconds: float = 0) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, job, model, str(length), str(repeats), device, str(min_seconds)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{job} at {length} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each mode at least (median)")
    ap.add_argument("--min-seconds", type=float, default=60, help="keep repeating (up to 12) until each mode has run "
                    "this long")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"model {args.model}; peak memory is above the loaded weights (sampled peak RSS on CPU)")
    print(f"{'length':>7} {'anchor tok/s':>13} {'ours tok/s':>11} {'ratio':>6} {'anchor MB':>10} {'ours MB':>8} "
          f"{'mem ratio':>9} {'ours MB/1k tok':>14}")
    rows = []
    for n in lengths:
        timed = measure("time", args.model, n, args.repeats, args.device, args.min_seconds)
        a = {**measure("anchor", args.model, n, 0, args.device), **timed["anchor"]}
        o = {**measure("ours", args.model, n, 0, args.device), **timed["ours"]}
        # the median of the pairs' ratios: each pair ran back to back, so it cancels the drift between pairs that
        # a ratio of the two medians keeps
        ratio = statistics.median(x / y for x, y in zip(a["all"], o["all"]))
        rows.append({"length": n, "anchor": a, "ours": o, "throughput_ratio": ratio,
                     "ratio_of_medians": a["seconds"] / o["seconds"]})
        mb = 1024 ** 2
        print(f"{n:>7} {n / a['seconds']:>13.1f} {n / o['seconds']:>11.1f} {ratio:>6.3f} {a['peak_extra'] / mb:>10.0f} "
              f"{o['peak_extra'] / mb:>8.0f} {o['peak_extra'] / max(a['peak_extra'], 1):>9.3f} "
              f"{o['peak_extra'] / mb / (n / 1024):>14.1f}", flush=True)
    w = rows[0]["ours"]["weights"] / 1024 ** 2
    print(f"weights {w:.0f} MB on {rows[0]['ours']['device']}; throughput target ratio ≥ 0.95: "
          f"{'met' if all(r['throughput_ratio'] >= 0.95 for r in rows) else 'NOT met'} "
          f"(min {min(r['throughput_ratio'] for r in rows):.3f})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
