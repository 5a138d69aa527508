"""`make bench`: run the benchmarks and write bench/RESULTS.md (issue 6). Nothing here is a test.

Every figure is a ratio to an anchor measured in the same run: conversion vs llama.cpp's own converter and `cp`
(bench/convert.py), perplexity vs a bare transformers forward (bench/eval_throughput.py). The LongRoPE search
benchmark takes about an hour on a 2-core CPU, so it runs only with --search; otherwise its last result
(bench/out/search/bench.json) is reported if there is one, or the section says it was not run.

    python bench/run_all.py [--sizes 1.5,3] [--repeats 3] [--lengths 2048,4096,8192,16384] [--search]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TARGETS = {"gguf_speed": 2.0, "gguf_rss": 0.5, "flat": 0.10, "same_dtype_vs_cp": 0.7, "hf_vs_cp": 1.05,
           "ppl_throughput": 0.95}


def machine() -> str:
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "gguf", "safetensors", "llama-cpp-python"))
    return (f"{os.cpu_count()} cores ({cpu}), {int(mem) / 2**20:.1f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; {versions}")


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def convert_section(results: dict) -> list[str]:
    lines = ["## Conversion (bench/convert.py)", "",
             "Random bf16 llama-config models with the real SmolLM2 tokenizer, sharded safetensors, warm page cache; "
             "median of the runs, peak RSS of the converting process and its children (the larger of its VmHWM and "
             "the polled sum of VmRSS over the process tree). Speed ratio = llama.cpp time / our "
             "time (target ≥ 2); RSS ratio = ours / llama.cpp (target ≤ 0.5); same-dtype throughput = cp time of "
             "the output / our time (target ≥ 0.7); HF export = our time / `cp -r` time (target ≤ 1.05).", "",
             "| model | what | ours s | anchor s | ratio | ours peak RSS GiB | anchor peak RSS GiB | RSS ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for size, r in results.items():
        tag = f"{r['model_gib']:.2f} GiB"
        for t in ("f16", "q8_0"):
            ours, theirs = r[f"gguf_{t}"], r.get(f"llamacpp_{t}")
            if theirs:
                lines.append(f"| {tag} | GGUF {t} vs llama.cpp | {ours['seconds']:.1f} | {theirs['seconds']:.1f} | "
                             f"{theirs['seconds'] / ours['seconds']:.2f}× faster | {ours['peak_rss_gib']:.2f} | "
                             f"{theirs['peak_rss_gib']:.2f} | {ours['peak_rss_gib'] / theirs['peak_rss_gib']:.2f} |")
        for t in ("bf16", "f16", "q8_0"):
            if f"gguf_{t}" in r and f"cp_{t}" in r:
                ours, cp = r[f"gguf_{t}"], r[f"cp_{t}"]
                lines.append(f"| {tag} | GGUF {t} vs cp of its output | {ours['seconds']:.1f} | {cp['seconds']:.2f} | "
                             f"{cp['seconds'] / ours['seconds']:.2f} of cp throughput | {ours['peak_rss_gib']:.2f} | "
                             f"{cp['peak_rss_gib']:.3f} | |")
        lines.append(f"| {tag} | HF export (copy + sha256) vs cp -r | {r['hf_copy']['seconds']:.2f} | "
                     f"{r['cp']['seconds']:.2f} | {r['hf_copy']['seconds'] / r['cp']['seconds']:.2f}× cp time | "
                     f"{r['hf_copy']['peak_rss_gib']:.2f} | {r['cp']['peak_rss_gib']:.3f} | |")
        lines.append(f"| {tag} | HF export --link vs cp -r | {r['hf_link']['seconds']:.2f} | {r['cp']['seconds']:.2f} | "
                     f"{r['hf_link']['seconds'] / r['cp']['seconds']:.2f}× cp time | {r['hf_link']['peak_rss_gib']:.2f} | | |")
    sizes = list(results.values())
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        for t in ("f16", "q8_0"):
            ra, rb = a[f"gguf_{t}"]["peak_rss_gib"], b[f"gguf_{t}"]["peak_rss_gib"]
            lines.append("")
            lines.append(f"Flatness, GGUF {t}: peak RSS {ra:.2f} GiB at {a['model_gib']:.2f} GiB vs {rb:.2f} GiB at "
                         f"{b['model_gib']:.2f} GiB: {abs(rb - ra) / ra * 100:.1f}% apart (target ≤ 10%).")
    return lines


def eval_section(rows: list[dict]) -> list[str]:
    mb = 2**20
    lines = ["## Perplexity evaluation (bench/eval_throughput.py)", "",
             "SmolLM2-135M, chunked-head perplexity (`perplexity.token_nll`) vs a bare `model(input_ids)` forward at "
             "the same length. Both run in one process, warmed up at the full length, then in back-to-back pairs whose "
             "order alternates; ≥ 3 pairs (more at short lengths, ≥ 60 s a side). tok/s is from each side's median "
             "time; the ratio is the median of the pairs' ratios. Memory is peak RSS above the loaded weights, a "
             "fresh process per side.", "",
             "| length | bare tok/s | ours tok/s | ratio (target ≥ 0.95) | runs a side | run-pair ratios | bare extra MB "
             "| ours extra MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["length"]
        pairs = [a / o for a, o in zip(r["anchor"].get("all", []), r["ours"].get("all", []))]  # same machine moment
        spread = f"{min(pairs):.2f}–{max(pairs):.2f}" if pairs else "—"
        lines.append(f"| {n} | {n / r['anchor']['seconds']:.0f} | {n / r['ours']['seconds']:.0f} | "
                     f"{r['throughput_ratio']:.3f} | {len(pairs) or '—'} | {spread} | "
                     f"{r['anchor']['peak_extra'] / mb:.0f} | {r['ours']['peak_extra'] / mb:.0f} |")
    if rows:
        lines.append(f"\nWeights: {rows[0]['ours']['weights'] / mb:.0f} MB on {rows[0]['ours']['device']}.")
    return lines


def _measured_at(name: str) -> str:
    """When a section's figures were measured: a pass with --skip-* reuses an earlier run's JSON."""
    when = datetime.datetime.fromtimestamp((OUT / name).stat().st_mtime, datetime.timezone.utc)
    return f"\nMeasured {when:%Y-%m-%d %H:%M} UTC (bench/out/{name})."


def search_section() -> list[str]:
    path = OUT / "search" / "bench.json"
    lines = ["## LongRoPE search (bench/search_longrope.py)", ""]
    if not path.is_file():
        return lines + ["Not run in this pass (about an hour on a 2-core CPU): `python bench/run_all.py --search`."]
    data = json.loads(path.read_text())
    st = data["settings"]
    lines.append(f"SmolLM2-135M, {st['target']} tokens, {st['documents']} fitness document(s) from {st['corpus']}, "
                 f"population {st['population']}, budget {st['budget']}, on {st['device']} (s = {st['target'] / 8192:g} "
                 f"of the trained 8192; 2× is `search_longrope.py --gpu`). Fitness is perplexity (lower is better); "
                 f"the first population holds the PI/NTK-style seeds of LongRoPE's search, so an early evaluation "
                 f"can already be below a reference.")
    log = path.parent / "search_log.json"
    if log.is_file():  # evaluations needed: the first candidate whose fitness is below each reference's
        phase = next(iter(json.loads(log.read_text())["phases"].values()))
        fits = [e["fitness"] for e in phase["evaluations"]]
        lines += ["", "| reference | its fitness | first evaluation below it | best found |", "|---|---|---|---|"]
        for name, ref in phase["references"].items():
            first = next((i + 1 for i, f in enumerate(fits) if f < ref["fitness"]), None)
            lines.append(f"| {name} | {ref['fitness']:.3f} | {first or 'none in ' + str(len(fits))} | {min(fits):.3f} |")
        lines.append("")
    lines.append("```json")
    lines.append(json.dumps({k: v for k, v in data.items() if k != "long_factor"}, indent=1)[:4000])
    lines.append("```")
    lines.append(_measured_at("search/bench.json"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1.5,3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--eval-repeats", type=int, default=3, help="timed forwards per length and side (median; a 16k "
                    "forward is minutes on a 2-core CPU)")
    ap.add_argument("--search", action="store_true", help="also run the hour-long LongRoPE search benchmark")
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    report = ["# Benchmark results", "", f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
              f"{machine()}.", ""]
    if not args.skip_convert:
        run("convert.py", "--sizes", args.sizes, "--repeats", str(args.repeats))
    if (OUT / "convert.json").is_file():
        report += convert_section(json.loads((OUT / "convert.json").read_text())) + [_measured_at("convert.json"), ""]
    if not args.skip_eval:
        rows = json.loads(run("eval_throughput.py", "--lengths", args.lengths, "--repeats", str(args.eval_repeats)).strip().splitlines()[-1])
        (OUT / "eval.json").write_text(json.dumps(rows, indent=2))
    if (OUT / "eval.json").is_file():
        report += eval_section(json.loads((OUT / "eval.json").read_text())) + [_measured_at("eval.json"), ""]
    if args.search:
        run("search_longrope.py", "--out", str(OUT / "search"))
    report += search_section()
    (HERE / "RESULTS.md").write_text("\n".join(report) + "\n")
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
