"""RULER on the real SmolLM2-135M (trained 8192): base vs YaRN ×2 vs Self-Extend at 4k, 8k and 16k (not a test).

Every model gets the same seeded prompts (built once with the base's tokenizer); each (model, task, length) cell's
predictions and wall seconds are kept in OUT/results.json and skipped when rerun, so an interrupted run continues.
At the end it prints (and writes to OUT/ruler.md, for bench/RESULTS.md) the RULER table — task scores per length
for every model, the RULER average, each model's effective length (RULER's 85.6 and the relative threshold: the
base's own average at 8k) — and the wall time per (task, length).

What it should show: the base falls past 8192 (its trained length), the extended models keep retrieval at 16384.
Use enough samples to separate them (the 95% intervals are printed): 20 per cell gives about ±20 points.

CPU run (hours; a 16k prefill of the 135M model is minutes on 2 shared cores):

    nohup nice -n 10 python bench/ruler_smollm2.py --samples 20 --out bench/out/ruler-smollm2 > bench/out/ruler.log 2>&1 &

Smoke run (tiny model, seconds): python bench/ruler_smollm2.py --model TINY_DIR --lengths 1024 --target 2048 \
    --tasks niah_single_1 --samples 1 --out /tmp/ruler-smoke
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "ropeconvert", *map(str, args), "-q"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("bench/out/ruler-smollm2"))
    ap.add_argument("--lengths", default="4096,8192,16384")
    ap.add_argument("--target", type=int, default=16384)
    ap.add_argument("--tasks", default="ruler", help="ruler (every offline task) or task names")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--models", default="base,yarn,selfextend")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    names = args.models.split(",")
    paths = {"base": args.model, "yarn": out / "yarn", "selfextend": out / "selfextend"}
    for name in names:
        if name != "base" and not (paths[name] / "config.json").exists():
            cli(args.model, "--method", name, "--target-context", args.target, "--out", paths[name])

    from ropeconvert.validators import corpus, runtime
    from ropeconvert.validators.ruler_task import RulerTask
    from ropeconvert.validators.task_registry import TaskContext
    from ropeconvert.validators.validate import Options, original_context

    task = RulerTask()
    opts = Options(tasks=tuple(args.tasks.split(",")), samples=args.samples, seed=args.seed, progress=False)
    opts.check()
    lengths = tuple(int(n) for n in args.lengths.split(","))
    rt = runtime.load(paths["base"])
    original = original_context(None, rt)
    prepared = task.prepare(TaskContext(opts.tasks, opts, lengths, rt.tokenizer, original, args.target,
                                        corpus.load("austen"), "austen"))
    rt.close()
    runs = {}
    for name in names:
        cached = results.get(name, {})
        todo = {k: v for k, v in prepared.samples.items() if f"{k[0]}@{k[1]}" not in cached}
        if todo:
            rt = runtime.load(paths[name])
            from dataclasses import replace

            for key, samples in todo.items():  # one cell at a time, saved as it finishes
                part = task.run(rt, replace(prepared, samples={key: samples}), name, progress=False)
                cached[f"{key[0]}@{key[1]}"] = {"predictions": part["predictions"][key],
                                                "seconds": part["seconds"][key]}
                results[name] = cached
                results_path.write_text(json.dumps(results, indent=1))
                print(f"[{time.strftime('%H:%M:%S')}] {name} {key[0]} {key[1]}: {part['seconds'][key]:.1f}s",
                      flush=True)
            rt.close()
        runs[name] = {"predictions": {k: cached[f"{k[0]}@{k[1]}"]["predictions"] for k in prepared.samples},
                      "seconds": {k: cached[f"{k[0]}@{k[1]}"]["seconds"] for k in prepared.samples}}
    lines = report(task, prepared, runs, names, original, Path(str(args.model)).name)
    (out / "ruler.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(task, prepared, runs, names, original, model: str) -> list[str]:
    """Markdown: scores per model, averages and effective lengths (absolute and relative), wall seconds."""
    from dataclasses import replace

    base = runs.get("base") or runs[names[0]]  # without the base (--models selfextend): no relative threshold
    records = {n: task.record(prepared, base, runs[n]) for n in names}
    relative = {n: task.record(replace(prepared, threshold="base"), base, runs[n]) for n in names}
    lengths = prepared.lengths
    head = "| task | " + " | ".join(f"{m} {n}" for n in lengths for m in names) + " |"
    lines = [f"RULER, {model} (trained {original}), {prepared.per_task} samples per task and length; "
             f"{prepared.haystack}", "", head, "|---|" + "---:|" * (len(lengths) * len(names))]
    for t in prepared.tasks:
        cells = [records[m]["scores"]["extended"][t][i] for i in range(len(lengths)) for m in names]
        lines.append(f"| {t} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    cells = [records[m]["average"]["extended"][i] for i in range(len(lengths)) for m in names]
    lines += ["| **average** | " + " | ".join(f"**{v:.1f}**" for v in cells) + " |", ""]
    for m in names:
        a, r = records[m]["effective_length"], relative[m]["effective_length"]
        band = [records[m]["intervals"]["extended"][t] for t in prepared.tasks]
        widest = max(hi - lo for row in band for lo, hi in row)
        rel = (f"{r['extended']['label']} (relative: {r['threshold']:.1f}, the base at {r['threshold_at']}); "
               if "base" in runs else "")
        lines.append(f"- {m}: effective length {a['extended']['label']} (threshold {a['threshold']:g}); {rel}"
                     f"widest 95% interval of a task score {widest:.0f} points")
    lines += ["", "Wall seconds per (task, length), " + ", ".join(names) + ":", ""]
    for t in prepared.tasks:
        lines.append(f"- {t}: " + "; ".join(
            f"{n}: " + "/".join(f"{runs[m]['seconds'][(t, n)]:.0f}" for m in names) for n in lengths))
    return lines


if __name__ == "__main__":
    main()
