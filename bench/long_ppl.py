"""Long-context perplexity of YaRN exports of SmolLM2-135M beside the base, with time and peak memory (not a test).

The GPU check of the validators issue: YaRN ×8 at 65536 tokens and ×16 at 131072 tokens (SmolLM2 is trained at
8192), one window per document (BOS + text, the YaRN proof-pile setting), the base at the same length. Each export
is made by the CLI (kept in OUT and reused); each model is loaded by the validators' runtime (CUDA: bf16 + SDPA,
else CPU f32), and each run reports perplexity per document, seconds per forward, and peak memory above the
loaded weights (CUDA: `torch.cuda.max_memory_allocated`; CPU: the process's VmHWM, a lifetime peak).

    python bench/long_ppl.py                                   # GPU: 8:65536,16:131072, 3 documents
    python bench/long_ppl.py --runs 2:4096 --documents 1       # a CPU smoke run (~1 min)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ropeconvert.validators import corpus, perplexity, runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", default="8:65536,16:131072", help="FACTOR:LENGTH pairs, comma-separated")
    ap.add_argument("--documents", type=int, default=3, help="Austen novels long enough for the window")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/long-ppl"))
    args = ap.parse_args()
    runs = [(float(f), int(n)) for f, n in (r.split(":") for r in args.runs.split(","))]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for factor, length in runs:
        export = out / f"yarn-x{factor:g}"
        if not (export / "config.json").exists():
            subprocess.run([sys.executable, "-m", "ropeconvert", args.model, "--method", "yarn", "--factor",
                            f"{factor:g}", "--out", str(export), "--quiet"], check=True)
        docs = None
        for name, model in (("base", args.model), (f"yarn x{factor:g}", export)):
            rt = runtime.load(model, device=args.device)
            if docs is None:  # the window holds BOS + length − 1 text tokens
                docs = corpus.token_ids(corpus.load("austen"), rt.tokenizer, length, length - 1, args.documents)
                if not docs:
                    raise SystemExit(f"no Austen novel has {length - 1} tokens")
            weights = sum(p.numel() * p.element_size() for p in rt.model.parameters())
            cuda = rt.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            r = perplexity.sweep(rt.scorer, docs, [length], bos_id=rt.bos_id, truncate=True, progress=True,
                                 label=f"{name} @ {length}")
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - before if cuda else vm_hwm() - weights
            rows.append({"model": name, "factor": factor, "length": length, "ppl": r.mean[0],
                         "per_document": {k: v[0] for k, v in r.per_document.items()},
                         "seconds_per_forward": seconds / len(docs), "peak_extra_bytes": peak,
                         "weights_bytes": weights, **rt.describe()})
            print(f"{name:<10} {length:>7} ppl {r.mean[0]:9.3f}  {seconds / len(docs):7.1f} s/forward  "
                  f"peak {peak / 2**30:6.2f} GiB above the weights ({rt.device}, {rt.dtype})", flush=True)
            rt.close()
    (out / "long_ppl.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows))


def vm_hwm() -> int:
    """Peak resident bytes of this process so far (CPU runs)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
