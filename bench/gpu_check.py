"""Device check for ropeconvert on one H100/H200 (issue #22, item 3): about 7 minutes, nothing downloaded.

On a random-weight Llama-3-8B-shaped model (bf16, built on the GPU from a LlamaConfig) it measures tokens/s and peak
memory (torch.cuda.max_memory_allocated, reset per run, weights included) of
- ppl: the project's chunked perplexity (validators.perplexity.hidden_states + nll_from_hidden) vs a bare forward
  (`model(input_ids).logits` + cross-entropy) at 32k / 64k / 128k tokens, both without the KV cache so that the
  difference is the LM head and the loss; a run out of memory is recorded "OOM";
- dpe: the decoder stack with a DPE position map attached (validators.dpe_attention) vs plain SDPA at 32k / 64k;
- generation: RULER's batched greedy decoding (validators.generate.greedy_batch) on 32k-token random prompts;
then runs `pytest -m gpu -q` and records its counts. Each section has a time budget: a decoder-layer hook stops a
forward that runs past it ("timeout", with the whole forward's time estimated from the layers done). --smoke: tiny
shapes on CPU in seconds (peak memory is then the sampled resident set), no pytest step. Exit 1 if a section raised.

    python bench/gpu_check.py --append-results      # on the device: bench/out/gpu-check/ + bench/RESULTS.md
    python bench/gpu_check.py --smoke --out /tmp/x  # the CPU smoke (tests/test_gpu_check.py)
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ropeconvert.convert.position_map import PositionMap
from ropeconvert.validators import dpe_attention
from ropeconvert.validators.generate import greedy_batch
from ropeconvert.validators.perplexity import hidden_states, nll_from_hidden

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072)
FULL = dict(shape=LLAMA3_8B, dtype=torch.bfloat16, ppl=[32768, 65536, 131072], dpe=[32768, 65536], gen=32768,
            gen_batch=4, new_tokens=32, warmup=1024, window=1024, original=8192,
            budgets=dict(ppl=120, dpe=150, generation=60, pytest=90))  # seconds: ~420 s + build and imports
SMOKE = dict(shape=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=512, rope_theta=10000.0, max_position_embeddings=1024),
             dtype=torch.float32, ppl=[256, 512, 1024], dpe=[256, 512], gen=256, gen_batch=2, new_tokens=8,
             warmup=64, window=64, original=128, budgets=dict(ppl=60, dpe=60, generation=60, pytest=0))


class SectionTimeout(Exception):
    """Raised by Deadline; args[0] is how many decoder layers the interrupted forward had finished."""


class Deadline:
    """A pre-hook on every decoder layer raises SectionTimeout once the section's time is up: one 64k forward under
    the DPE attention can last minutes and nothing else can interrupt it. On CUDA it synchronises before it looks
    (Python runs ahead of the GPU), at most once a second so that decoding keeps its launch overlap."""

    def __init__(self, model, device: torch.device):
        self.cuda, self.layers = device.type == "cuda", model.base_model.layers
        self.set(math.inf)
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: self.check(i))

    def set(self, at: float) -> None:
        self.at, self.last, self.expired = at, -math.inf, False

    def check(self, i: int) -> None:
        if self.at == math.inf:
            return
        if not self.expired and time.perf_counter() - self.last >= 1.0:
            if self.cuda:
                torch.cuda.synchronize()
            self.last = time.perf_counter()
            self.expired = self.last > self.at  # and stays so: the section's later runs stop at once
        if self.expired:
            raise SectionTimeout(i)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(run, device: torch.device, tokens: int, deadline: Deadline) -> dict:
    """Time and peak memory of one call of `run`; OOM and timeouts are results, not errors. Peak: CUDA's own counter,
    reset here; on CPU the resident set sampled every 2 ms by a thread (ru_maxrss cannot be reset)."""
    out, oom, cuda = {"status": "ok"}, False, device.type == "cuda"
    gc.collect()  # before the clock starts, as the resets below
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        peak, done = [rss()], threading.Event()

        def sample():  # a thread: the forward cannot be paused to look
            while not done.wait(0.002):
                peak[0] = max(peak[0], rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out["value"] = run()
        if cuda:
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        oom = True  # freed below, once the traceback (which holds the big tensors) is gone
    except SectionTimeout as e:
        done_layers = e.args[0]
        est = (time.perf_counter() - t0) * len(deadline.layers) / done_layers if done_layers else None
        out.update(status="timeout", layers_done=done_layers, est_seconds=est)
    seconds = time.perf_counter() - t0
    if cuda:
        top = torch.cuda.max_memory_allocated()
    else:
        done.set()
        sampler.join()
        top = max(peak[0], rss())
    if oom:
        out["status"] = "OOM"
        gc.collect()
        torch.cuda.empty_cache()
    out.update(seconds=seconds, peak_mem_mb=top / 2 ** 20)
    if out["status"] == "ok":
        out["tokens_per_s"] = tokens / seconds
    return out


def ratios(ours: dict, other: dict) -> dict:
    if ours["status"] != "ok" or other["status"] != "ok":
        return {"throughput_ratio": None, "memory_ratio": None}
    return {"throughput_ratio": ours["tokens_per_s"] / other["tokens_per_s"],
            "memory_ratio": ours["peak_mem_mb"] / other["peak_mem_mb"]}


def random_ids(n: int, vocab: int, device: torch.device, rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, n), generator=torch.Generator().manual_seed(seed + n)).to(device)


# ---- the sections -------------------------------------------------------------------------------------------------
def build_model(cfg: dict, device: torch.device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**cfg["shape"], head_dim=cfg["shape"]["hidden_size"] // cfg["shape"]["num_attention_heads"],
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):  # initialised in place in bf16: no 32 GB f32 copy on the host first
        model = AutoModelForCausalLM.from_config(config, dtype=cfg["dtype"], attn_implementation="sdpa")
    return model.eval()


def chunked_nll(model, ids: torch.Tensor) -> float:
    hidden = hidden_states(model, ids)[0]
    nll, _ = nll_from_hidden(model, hidden[:-1], ids[0, 1:])
    return float(nll.mean())


def bare_nll(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, use_cache=False).logits  # full [L, vocab] logits, what a user would write
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:]))


def ppl_section(model, cfg, device, deadline) -> dict:
    vocab = cfg["shape"]["vocab_size"]
    warm = random_ids(cfg["warmup"], vocab, device)
    for fn in (chunked_nll, bare_nll):  # kernels, cuBLAS handles, allocator: not part of any timing
        measure(lambda: fn(model, warm), device, warm.shape[1], deadline)
    rows = []
    for n in cfg["ppl"]:
        ids = random_ids(n, vocab, device)
        row = {"length": n}
        for name, fn in (("chunked", chunked_nll), ("bare", bare_nll)):
            row[name] = measure(lambda: fn(model, ids), device, n, deadline)
            row[name]["nll"] = row[name].pop("value", None)  # the two must agree: same model, same tokens
            print(f"  ppl {name:>7} @ {n}: {describe(row[name])}", flush=True)
        rows.append({**row, **ratios(row["chunked"], row["bare"])})
        del ids
    return {"rows": rows}


def position_map(cfg: dict):
    s = cfg["shape"]
    pairs = s["hidden_size"] // s["num_attention_heads"] // 2
    # DPE's shape of map: four groups of pairs, the fastest kept exact, about half the pairs selected per head
    selected = np.random.default_rng(0).random((s["num_hidden_layers"], s["num_attention_heads"], pairs)) < 0.5
    return PositionMap.build(window=cfg["window"], boundaries=[pairs * i // 4 for i in range(5)],
                             scales=[1.0, 2.0, 4.0, 8.0], original_context=cfg["original"], selected=selected)


def dpe_section(model, cfg, device, deadline) -> dict:
    pm, vocab = position_map(cfg), cfg["shape"]["vocab_size"]

    def run(name: str, ids: torch.Tensor) -> dict:  # the decoder stack only: the head is the same for both
        if name == "dpe":
            dpe_attention.attach(model, pm)
        try:
            m = measure(lambda: hidden_states(model, ids)[0, -1, 0].item(), device, ids.shape[1], deadline)
        finally:
            dpe_attention.detach(model)  # back to SDPA (a no-op when nothing is attached)
        m.pop("value", None)
        return m

    warm = random_ids(2 * cfg["window"], vocab, device)  # past the window: the grouped branch runs too
    run("sdpa", warm), run("dpe", warm)
    rows = []
    for n in cfg["dpe"]:  # SDPA then DPE at each length, so a slow DPE run cannot leave SDPA unmeasured
        ids = random_ids(n, vocab, device)
        row = {"length": n, "sdpa": run("sdpa", ids), "dpe": run("dpe", ids)}
        print(f"  sdpa @ {n}: {describe(row['sdpa'])}; dpe: {describe(row['dpe'])}", flush=True)
        rows.append({**row, **ratios(row["dpe"], row["sdpa"])})  # a throughput ratio below 1 is DPE's slowdown
        del ids
    return {"window": cfg["window"], "rows": rows}


def generation_section(model, cfg, device, deadline) -> dict:
    n, batch, new = cfg["gen"], cfg["gen_batch"], cfg["new_tokens"]
    prompts = random_ids(n, cfg["shape"]["vocab_size"], device, rows=batch).tolist()
    # no EOS: random weights may emit it at once, and every row must decode all `new` tokens
    measure(lambda: greedy_batch(model, [p[:cfg["warmup"]] for p in prompts], 2, set(), 0), device, 1, deadline)
    m = measure(lambda: greedy_batch(model, prompts, new, set(), 0), device, batch * n, deadline)
    made = sum(len(x) for x in m.pop("value", []))
    m.pop("est_seconds", None)  # a per-forward estimate: meaningless across one prefill and many decode steps
    if m["status"] == "ok":  # prefill + decode: every prompt token and every generated one
        m.update(tokens_per_s=(batch * n + made) / m["seconds"], new_tokens_per_s=made / m["seconds"])
    print(f"  generation {batch} × {n} + {new}: {describe(m)}", flush=True)
    return {"length": n, "batch": batch, "max_new_tokens": new, "new_tokens": made, **m}


def pytest_section(budget: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q"], cwd=REPO, capture_output=True,
                              text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "budget_s": budget}
    summary = (proc.stdout.strip().splitlines() or [""])[-1]  # "2 passed, 301 deselected in 9.1s"
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for num, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts["errors" if kind.startswith("error") else kind] += int(num)
    return {"status": "ok", "returncode": proc.returncode, **counts, "summary": summary,
            "tail": (proc.stdout + proc.stderr)[-3000:]}


# ---- reporting ----------------------------------------------------------------------------------------------------
def describe(m: dict) -> str:
    if m["status"] == "OOM":
        return "OOM"
    if m["status"] == "timeout":
        est = m.get("est_seconds")
        return f"timeout after {m['layers_done']} layers" + (f" (est. {est:.0f} s)" if est else "")
    return f"{m['tokens_per_s']:,.0f} tok/s, peak {m['peak_mem_mb'] / 1024:.2f} GiB"


def table(rows: list[dict], a: str, b: str, heads: tuple[str, str]) -> list[str]:
    num = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731 — a ratio is None when either side did not finish
    return ["", f"| length | {heads[0]} | {heads[1]} | tok/s ratio | memory ratio |", "|---:|---|---|---:|---:|"] + [
        f"| {r['length']} | {describe(r[a])} | {describe(r[b])} | {num(r['throughput_ratio'])} "
        f"| {num(r['memory_ratio'])} |" for r in rows]


def markdown(res: dict) -> str:
    s, out = res["sections"], [f"Device {res['device']}, torch {res['torch']}, transformers {res['transformers']}, "
                                f"model {res['model']}, weights {res.get('weights_mb', 0) / 1024:.1f} GiB."]
    if "rows" in s.get("ppl", {}):
        out += table(s["ppl"]["rows"], "chunked", "bare", ("chunked ppl (ours)", "bare forward + CE"))
    if "rows" in s.get("dpe", {}):
        out += table(s["dpe"]["rows"], "dpe", "sdpa", (f"DPE attention (W={s['dpe']['window']})", "SDPA"))
    g, p = s.get("generation", {}), s.get("pytest", {})
    if "status" in g:
        out += ["", f"Generation (greedy_batch, {g['batch']} × {g['length']} prompt tokens + {g['max_new_tokens']} new):"
                f" {describe(g)}" + (f", {g['new_tokens_per_s']:.1f} new tok/s" if g["status"] == "ok" else "")]
    if "status" in p:
        out += ["", "`pytest -m gpu -q`: " + (f"{p['passed']} passed, {p['failed']} failed, {p['skipped']} skipped, "
                                              f"{p['errors']} errors (exit {p['returncode']})" if "passed" in p
                                              else p["status"]) + "."]
    return "\n".join(out + [f"- {n}: ERROR {sec['error']}" for n, sec in s.items() if "error" in sec]) + "\n"


def run_sections(cfg: dict, device: torch.device, res: dict) -> None:
    t0, model, deadline = time.perf_counter(), None, None
    for name, fn in (("build", None), ("ppl", ppl_section), ("dpe", dpe_section), ("generation", generation_section)):
        print(f"[{time.perf_counter() - t0:6.1f} s] {name} (budget {cfg['budgets'].get(name, '—')} s)", flush=True)
        start = time.perf_counter()
        try:
            if name == "build":  # not bounded: seconds, and every other section needs it
                model = build_model(cfg, device)
                deadline = Deadline(model, device)
                res["weights_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
                res["sections"][name] = {}
            elif model is None:
                raise RuntimeError("no model (the build failed)")
            else:
                deadline.set(start + cfg["budgets"][name])
                res["sections"][name] = fn(model, cfg, device, deadline)
        except Exception as e:  # noqa: BLE001 — one failed section must not cost the others
            res["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
        finally:
            if deadline is not None:
                deadline.set(math.inf)
        res["sections"][name]["section_seconds"] = time.perf_counter() - start
    del model, deadline  # the pytest step gets the whole GPU
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/gpu-check", help="directory for gpu_check.json/.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU in seconds; skips the pytest step")
    ap.add_argument("--append-results", action="store_true", help="append a dated section to bench/RESULTS.md")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("the full check needs CUDA; use --smoke for the CPU run", file=sys.stderr)
        return 2
    import transformers

    cfg, device, t0 = SMOKE if args.smoke else FULL, torch.device("cpu" if args.smoke else "cuda"), time.perf_counter()
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "model": "tiny Llama (smoke), f32" if args.smoke else "random Llama-3-8B shape, bf16, SDPA",
           "shape": cfg["shape"], "budgets_s": cfg["budgets"], "sections": {}}
    run_sections(cfg, device, res)
    if args.smoke:
        res["sections"]["pytest"] = {"status": "not run (--smoke)"}
    else:
        print(f"[{time.perf_counter() - t0:6.1f} s] pytest -m gpu -q", flush=True)
        res["sections"]["pytest"] = pytest_section(cfg["budgets"]["pytest"])
    res["total_seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "gpu_check.md").write_text(md)
    print(md, flush=True)
    if args.append_results:
        with open(REPO / "bench/RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## Device check on {res['device']} (bench/gpu_check.py{' --smoke' if args.smoke else ''})\n\n"
                    f"{res['date']}, {res['total_seconds']:.0f} s in all. Random weights: speed and memory only; "
                    f"peak memory includes the weights.\n\n{md}")
    print(f"wrote {args.out / 'gpu_check.json'} in {res['total_seconds']:.1f} s", flush=True)
    return 1 if any("error" in sec for sec in res["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
