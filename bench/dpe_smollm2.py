"""DPE and Self-Extend on the real SmolLM2-135M (trained 8192) at 2× its length, against the base and YaRN (not a test).

Stages (each result is kept in OUT/results.json and skipped when rerun, so an interrupted run continues):
1. exports: Self-Extend (default W = 1024, G = 8), YaRN ×2 — HF exports in OUT/.
2. search: `ropeconvert search --method dpe` at the target (key-dimension selection, then the per-group sweep),
   then the DPE export from its dpe_map.json (--to both: HF + the GGUF rope_freqs approximation).
3. passkey at the target: base, Self-Extend, DPE — the landmark template, greedy, 10 new tokens, seeded keys.
4. perplexity at the target (one window per document, BOS + text): base, YaRN, Self-Extend, DPE; the seconds of
   each model's forwards give the runtime's speed against the plain model on the same tokens.
5. gguf: the DPE GGUF (rope_freqs approximation) in llama.cpp on the same windows: its gap to exact DPE.

CPU run (a 16k forward of the plain model is ~2–4 min on 2 shared cores; the whole run takes hours):

    nohup nice -n 10 python bench/dpe_smollm2.py --out bench/out/dpe-smollm2 > bench/out/dpe-smollm2.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("bench/out/dpe-smollm2"))
    ap.add_argument("--target", type=int, default=16384)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--samples", type=int, default=1, help="needle prompts per detection evaluation")
    ap.add_argument("--topk", type=int, default=None, help="pairs rescaled per (layer, head) (search default: 3/4)")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--documents", type=int, default=2)
    ap.add_argument("--stages", default="exports,search,passkey,ppl,gguf")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save(key, value):
        results[key] = value
        results_path.write_text(json.dumps(results, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value)[:400]}", flush=True)

    stages = args.stages.split(",")
    target = args.target
    exports = {"selfextend": out / "selfextend", "yarn": out / "yarn", "dpe": out / "dpe"}
    if "exports" in stages:
        for name, extra in (("selfextend", []), ("yarn", [])):
            if not (exports[name] / "config.json").exists():
                cli(args.model, "--method", name, "--target-context", target, "--out", exports[name], *extra)
    if "search" in stages and "search" not in results:
        t0 = time.perf_counter()
        cli("search", args.model, "--method", "dpe", "--target-context", target, "--groups", args.groups,
            "--samples", args.samples, *(["--topk", args.topk] if args.topk else []), "--out", out / "search",
            "--resume" if (out / "search").exists() else "--force")
        log = json.loads((out / "search" / "dpe_search.json").read_text())
        save("search", {**log["result"], "evaluations": log["evaluations"], "seconds": time.perf_counter() - t0})
    if "search" in stages and not (exports["dpe"] / "config.json").exists():
        cli(args.model, "--method", "dpe", "--dpe-map", out / "search" / "dpe_map.json", "--to", "both",
            "--out", exports["dpe"])
    from ropeconvert.validators import corpus, passkey, perplexity, runtime

    models = {"base": args.model, **{k: str(v) for k, v in exports.items()}}
    if "passkey" in stages:
        depths = [float(d) for d in args.depths.split(",")]
        for name in ("base", "selfextend", "dpe"):
            key = f"passkey/{name}"
            if key in results:
                continue
            rt = runtime.load(models[name])
            t0 = time.perf_counter()
            r = passkey.run(rt, [target], depths, 1, progress=False)
            save(key, {"accuracy": r.accuracy[0], "tokens": r.tokens, "seconds": time.perf_counter() - t0,
                       "samples": [{k: s[k] for k in ("depth", "pass_key", "response", "correct", "tokens")}
                                   for s in r.samples]})
            rt.close()
    docs = None
    if "ppl" in stages or "gguf" in stages:
        rt = runtime.load(models["base"])
        tok, bos = rt.tokenizer, rt.bos_id
        rt.close()
        docs = corpus.token_ids(corpus.load("austen"), tok, target, target, args.documents)
    if "ppl" in stages:
        for name in ("base", "yarn", "selfextend", "dpe"):
            key = f"ppl/{name}"
            if key in results:
                continue
            rt = runtime.load(models[name])
            t0 = time.perf_counter()
            r = perplexity.sweep(rt.scorer, docs, [target], bos_id=bos, truncate=True, progress=False)
            save(key, {"mean": r.mean[0], "per_document": {k: v[0] for k, v in r.per_document.items()},
                       "seconds": time.perf_counter() - t0, "forwards": len(docs)})
            rt.close()
    if "gguf" in stages and "ppl/dpe_gguf" not in results:
        from ropeconvert.validators.gguf_runtime import GgufRuntime

        rt = GgufRuntime(Path(str(exports["dpe"]) + ".gguf"))
        t0 = time.perf_counter()
        r = perplexity.sweep(rt.scorer, docs, [target], bos_id=bos, truncate=True, progress=False)
        save("ppl/dpe_gguf", {"mean": r.mean[0], "per_document": {k: v[0] for k, v in r.per_document.items()},
                              "seconds": time.perf_counter() - t0})
    summary(results)


def cli(*argv) -> None:
    cmd = [sys.executable, "-m", "ropeconvert", *map(str, argv), "--quiet"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def summary(results: dict) -> None:
    print("\n== passkey at the target (accuracy per depth) ==")
    for k, v in results.items():
        if k.startswith("passkey/"):
            print(f"{k[8:]:<11} {v['accuracy']}  responses {[s['response'] for s in v['samples']]}")
    print("\n== perplexity at the target ==")
    for k, v in results.items():
        if k.startswith("ppl/"):
            print(f"{k[4:]:<11} {v['mean']:.3f}  ({v['seconds']:.0f} s)")
    if "ppl/dpe" in results and "ppl/dpe_gguf" in results:
        a, b = results["ppl/dpe"]["mean"], results["ppl/dpe_gguf"]["mean"]
        print(f"GGUF approximation / exact DPE perplexity: {b / a:.3f}")
    if "ppl/dpe" in results and "ppl/base" in results:
        print(f"DPE runtime vs plain model, same tokens: {results['ppl/dpe']['seconds'] / results['ppl/base']['seconds']:.2f}×")
    if "search" in results:
        print(f"\nDPE scales {results['search']['scales']}, effective lengths {results['search']['effective_lengths']}")


if __name__ == "__main__":
    main()
