"""Gemma-3-270M (trained 32768) extended ×2 with YaRN to 65536, beside the unscaled model, in llama.cpp (not a test).

The export is the main command's own (`ropeconvert gemma3-270m --method yarn --factor 2 --to gguf`: the Q4_K_M
GGUF re-extended, tensors untouched), so both models run the same weights and differ only in the rope of the global
layers. Every cell — perplexity of one window of Austen (BOS + text, tokenized once) at each length, and passkey
prompts at each passkey length — runs in llama.cpp (validators/llamacpp.py), is saved to OUT/results.json as it
finishes (a rerun skips it) and printed with its wall seconds; the end prints the markdown for bench/RESULTS.md.

What it should show: past 32768 the unscaled model's perplexity rises and it loses the pass key; YaRN ×2 keeps both.

    nohup nice -n 10 python bench/gemma3_270m.py > bench/out/gemma3.log 2>&1 &          # hours on 2 CPU cores
    python bench/gemma3_270m.py --lengths 2048 --passkey-lengths 2048 --trials 1 --out /tmp/g3-smoke   # minutes
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/gemma3-270m"))
    ap.add_argument("--lengths", default="32768,65536", help="perplexity window lengths (tokens)")
    ap.add_argument("--passkey-lengths", default="49152")
    ap.add_argument("--trials", type=int, default=2, help="passkey prompts per length (depth 0.5, seeded keys)")
    ap.add_argument("--models", default="yarn,base")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    yarn = out / "gemma3-270m-yarn-64k.gguf"
    if not yarn.exists():
        subprocess.run([sys.executable, "-m", "ropeconvert", "gemma3-270m", "--method", "yarn", "--factor", "2",
                        "--to", "gguf", "--out", str(yarn), "-q"], check=True)
    from ropeconvert.formats.source import resolve
    from ropeconvert.validators import corpus, passkey
    from ropeconvert.validators.llamacpp import LlamaCpp

    paths = {"base": resolve("gemma3-270m").path, "yarn": yarn}
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    lengths = [int(n) for n in args.lengths.split(",")]
    key_lengths = [int(n) for n in args.passkey_lengths.split(",") if n]
    longest = max(lengths + key_lengths)

    def save(model: str, cell: str, value: dict) -> None:
        results.setdefault(model, {})[cell] = value
        results_path.write_text(json.dumps(results, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {model} {cell}: {value}", flush=True)

    for model in args.models.split(","):
        with LlamaCpp(paths[model], threads=args.threads) as lc:
            text = "\n\n".join(d.text for d in corpus.load("austen"))
            ids = lc.tokenize(text)[:max(lengths)]  # BOS + text, one tokenization for every length
            for n in lengths:
                if f"ppl@{n}" in results.get(model, {}):
                    continue
                t = time.time()
                e = lc.eval(ids[:n], n_ctx=n)
                save(model, f"ppl@{n}", {"ppl": round(e.perplexity, 4), "seconds": round(time.time() - t, 1),
                                         "n_ctx_train": e.n_ctx_train})
            for n in key_lengths:
                if f"passkey@{n}" in results.get(model, {}):
                    continue
                count = lambda s: len(lc.tokenize(s))  # noqa: E731
                n_garbage = passkey.fit_to_tokens(lambda g: passkey.build_prompt(g, 0.5, 50000), count, n,
                                                  hi=n * 8)
                t, answers = time.time(), []
                for trial in range(args.trials):
                    key = random.Random(f"0-{n}-0.5-{trial}").randint(1, 50000)
                    prompt = lc.tokenize(passkey.build_prompt(n_garbage, 0.5, key))
                    reply = lc.detokenize(lc.greedy(prompt, passkey.MAX_NEW_TOKENS, n_ctx=longest + 256))
                    answers.append({"key": key, "tokens": len(prompt), "correct": passkey.answer_of(reply) == key})
                save(model, f"passkey@{n}", {"accuracy": sum(a["correct"] for a in answers) / len(answers),
                                             "answers": answers, "seconds": round(time.time() - t, 1)})
    print("\n".join(report(results, lengths, key_lengths)))


def report(results: dict, lengths: list[int], key_lengths: list[int]) -> list[str]:
    names = [m for m in ("base", "yarn") if m in results]
    lines = ["| model | " + " | ".join([f"ppl {n}" for n in lengths] + [f"passkey {n}" for n in key_lengths]) + " |",
             "|---|" + "---:|" * (len(lengths) + len(key_lengths))]
    for m in names:
        cells = [results[m].get(f"ppl@{n}") for n in lengths] + [results[m].get(f"passkey@{n}") for n in key_lengths]
        shown = [("—" if c is None else f"{c['ppl']:.2f} ({c['seconds']:.0f} s)" if "ppl" in c
                  else f"{100 * c['accuracy']:.0f}% ({c['seconds']:.0f} s)") for c in cells]
        lines.append(f"| {m} | " + " | ".join(shown) + " |")
    return lines


if __name__ == "__main__":
    main()
