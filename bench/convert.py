"""Conversion speed and memory against the anchors, measured in the same run (issue 6 item 1).

Generates random llama-config models (bf16, the real SmolLM2 tokenizer, safetensors shards) of about 1.5 GB and
3 GB, then times, as ratios to anchors run here and now (median of --repeats, warm page cache, peak RSS of the
child process from the OS):
  - our GGUF export at f16 and q8_0  vs  llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python sdist, same
    out type)  and vs  `cp` of the same bytes;
  - our HF export (copy + sha256 manifest, and --link)  vs  `cp -r` of the model directory;
  - the re-extension of the embedded SmolLM2 Q4_1 GGUF (`--to gguf`)  vs  one GGUFReader open of that file plus a
    `cp` of it: what a re-extension cannot avoid (parse the header once, copy the bytes), goal ≤ 1.5× their sum.
Writes bench/out/convert.json; bench/run_all.py turns it into bench/RESULTS.md.

    python bench/convert.py [--sizes 1.5,3] [--repeats 3] [--skip-llamacpp] [--reextend-only]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
HIDDEN, INTER, HEADS, KV, VOCAB = 2048, 5632, 16, 4, 49152
SHARD_BYTES = 1 << 30


def layer_bytes() -> int:
    per = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * (HIDDEN // HEADS * KV) + 3 * HIDDEN * INTER + 2 * HIDDEN
    return per * 2


def make_model(path: Path, gib: float, tokenizer_dir: Path) -> Path:
    """A random bf16 llama checkpoint of about `gib` GiB, sharded like the Hub's, written without torch."""
    layers = max(1, round((gib * 2**30 - VOCAB * HIDDEN * 2) / layer_bytes()))
    if (path / "config.json").is_file():
        return path
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kv_dim = HIDDEN // HEADS * KV
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (kv_dim, HIDDEN),
                       p + "self_attn.v_proj.weight": (kv_dim, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                       p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,),
                       p + "post_attention_layernorm.weight": (HIDDEN,)})
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        if current and size + n > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += n
    shards.append(current)
    weight_map, total = {}, 0
    noise = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).view(np.uint32) >> 16  # bf16 bits
    noise = noise.astype(np.uint16)
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in shard.items():
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(tmp / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in shard.items():
                count = int(np.prod(shape))
                reps = -(-count // noise.size)
                np.roll(np.tile(noise, reps)[:count], hash(name) % 997).tofile(f)
        total += offset
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "max_position_embeddings": 8192, "rope_theta": 100000.0,
              "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, tmp / name)
    os.replace(tmp, path)
    return path


def llamacpp_converter() -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (the same llama.cpp the tests run)."""
    root = OUT / "llamacpp-sdist"
    script = next(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"), None)
    if script:
        return script
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    LLAMA_CPP_PYTHON, "-d", str(root)], check=True)
    with tarfile.open(next(root.glob("*.tar.gz"))) as tar:
        tar.extractall(root, filter="data")
    return next(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))


def measure(cmd: list[str], cleanup: Path | None) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process and the processes it starts.

    Polled every 10 ms: the child's own VmHWM (the kernel's high-water mark of the memory map created by exec, so
    unlike wait4's ru_maxrss it does not count pages shared with this large Python process between fork and exec),
    and the sum of VmRSS over the child and all its descendants (our exporter builds the tokenizer keys in a child
    process). The peak is the larger of the two."""
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
    err = OUT / "last-stderr.txt"
    peak_kb = 0
    with open(err, "wb") as errf:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
        while proc.poll() is None:
            tree = sum(_status_kb(pid, "VmRSS:") for pid in _tree(proc.pid))
            peak_kb = max(peak_kb, _status_kb(proc.pid, "VmHWM:"), tree)
            time.sleep(0.01)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… failed: {err.read_text()[-800:]}")
    return wall, peak_kb / 2**20


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


def median_run(cmd: list[str], out: Path, repeats: int) -> dict:
    runs = [measure(cmd, out) for _ in range(repeats)]
    return {"seconds": statistics.median(r[0] for r in runs), "peak_rss_gib": max(r[1] for r in runs),
            "runs": [round(r[0], 2) for r in runs]}


def bench_size(model: Path, repeats: int, skip_llamacpp: bool) -> dict:
    rc = [sys.executable, "-m", "ropeconvert"]
    size = sum(f.stat().st_size for f in model.iterdir())
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cat", *map(str, model.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)  # warm
    r = {"model_gib": size / 2**30}
    r["cp"] = median_run(["cp", "-r", str(model), str(work / "cp")], work / "cp", repeats)
    r["hf_copy"] = median_run(rc + [str(model), "-m", "yarn", "-s", "2", "-q", "-o", str(work / "hf")], work / "hf", repeats)
    r["hf_link"] = median_run(rc + [str(model), "-m", "yarn", "-s", "2", "-q", "--link", "-o", str(work / "hfl")], work / "hfl", repeats)
    for outtype in ("bf16", "f16", "q8_0"):  # bf16 → bf16 is the same-dtype case
        target = work / f"ours-{outtype}.gguf"
        r[f"gguf_{outtype}"] = median_run(rc + [str(model), "-m", "yarn", "-s", "2", "-q", "--to", "gguf",
                                                "--outtype", outtype, "-o", str(target)], target, repeats)
        r[f"gguf_{outtype}"]["out_gib"] = target.stat().st_size / 2**30
        if not skip_llamacpp and outtype != "bf16":
            theirs = work / f"llamacpp-{outtype}.gguf"
            r[f"llamacpp_{outtype}"] = median_run([sys.executable, str(llamacpp_converter()), str(model), "--outtype",
                                                   outtype, "--outfile", str(theirs)], theirs, repeats)
        # cp of our output file: the pure I/O cost of writing that many bytes (same-dtype throughput anchor)
        r[f"cp_{outtype}"] = median_run(["cp", str(target), str(work / "cp.gguf")], work / "cp.gguf", repeats)
    shutil.rmtree(work, ignore_errors=True)
    return r


def bench_reextend(repeats: int) -> dict:
    """Re-extension of the embedded GGUF vs one GGUFReader open (a child Python, as the conversion is) + `cp`."""
    from ropeconvert.formats.source import embedded_gguf

    src, work = embedded_gguf(), OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm page cache
    target = work / "reextended.gguf"
    r = {"source_mib": src.stat().st_size / 2**20,
         "reextend": median_run([sys.executable, "-m", "ropeconvert", "smollm2-135m", "-m", "yarn", "-s", "2", "-q",
                                 "--to", "gguf", "-o", str(target)], target, repeats),
         "gguf_reader_open": median_run([sys.executable, "-c", f"from gguf import GGUFReader; GGUFReader({str(src)!r})"],
                                        None, repeats),
         "cp": median_run(["cp", str(src), str(work / "cp.gguf")], work / "cp.gguf", repeats)}
    anchor = r["gguf_reader_open"]["seconds"] + r["cp"]["seconds"]
    r["ratio_to_open_plus_cp"] = r["reextend"]["seconds"] / anchor
    shutil.rmtree(work, ignore_errors=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1.5,3", help="model sizes in GiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--reextend-only", action="store_true", help="only the GGUF re-extension against its anchors")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    r = bench_reextend(args.repeats)  # its own file: convert.json holds one entry per model size
    print(f"re-extension {r['reextend']['seconds']:.2f} s; one GGUFReader open {r['gguf_reader_open']['seconds']:.2f} s "
          f"+ cp {r['cp']['seconds']:.2f} s; ratio {r['ratio_to_open_plus_cp']:.2f} (goal ≤ 1.5)", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "convert-reextend.json").write_text(json.dumps(r, indent=2))
    if args.reextend_only:
        return
    results = {}
    from ropeconvert.formats.source import hf_checkpoint, resolve

    tokenizer_dir = hf_checkpoint(resolve("smollm2-135m"), progress=False)
    for gib in (float(x) for x in args.sizes.split(",")):
        model = make_model(OUT / f"random-llama-{gib:g}gib", gib, tokenizer_dir)
        print(f"== {gib:g} GiB model: {model}", flush=True)
        results[f"{gib:g}"] = bench_size(model, args.repeats, args.skip_llamacpp)
        print(json.dumps(results[f"{gib:g}"], indent=1), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "convert.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
