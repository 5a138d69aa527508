"""Peak memory of the HF → GGUF writer against model size (not a test; `python bench/gguf_memory.py`).

Two random bf16 Llama checkpoints with the same widths (so the same largest tensor) but 2 and 12 layers — about
0.5 GiB and 1.4 GiB — are converted to f16 GGUF, each in a fresh child process; the peak RSS the OS reports for the
child (`ru_maxrss`) is printed next to the model size and next to an anchor child that imports the same modules and
loads the same tokenizer but converts no weights. A streaming writer shows the same peak for both sizes: the anchor
plus about one tensor (the 49152 × 2048 embedding: 0.19 GiB bf16 in, 0.19 GiB f16 out).

The tokenizer is the real SmolLM2 one, copied from the dequantized SmolLM2 checkpoint in the ropeconvert cache
(`make test` builds it; ROPECONVERT_CACHE overrides the location).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 16, 4, 49152
CHILD = r"""
import resource, sys, time
from pathlib import Path
from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config
from ropeconvert.formats.gguf import write_gguf_export
src, out = Path(sys.argv[1]), Path(sys.argv[2])
if out.name == "none":  # the anchor: same imports, and the same tokenizer loaded, but no weights converted
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(src)
else:
    spec = build_spec("yarn", base_rope_from_config(read_config(src)), factor=4.0)
    t = time.time()
    write_gguf_export(src, spec, out, outtype="f16", progress=False)
    print(f"{time.time() - t:.1f}", file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def make_model(out: Path, layers: int, tokenizer_dir: Path, seed: int = 0) -> int:
    """A random bf16 Llama written shard by shard (one layer in memory at a time); returns its weight bytes."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    rng = torch.Generator().manual_seed(seed)
    head_dim = HIDDEN // HEADS

    def rand(*shape):
        return (torch.randn(*shape, generator=rng) * 0.02).to(torch.bfloat16)

    def shards():  # generated one at a time, so building the model never holds more than one layer
        yield {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "lm_head.weight": rand(VOCAB, HIDDEN),
               "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}
        for i in range(layers):
            p = f"model.layers.{i}."
            yield {p + "self_attn.q_proj.weight": rand(HIDDEN, HIDDEN),
                   p + "self_attn.k_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
                   p + "self_attn.v_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
                   p + "self_attn.o_proj.weight": rand(HIDDEN, HIDDEN),
                   p + "mlp.gate_proj.weight": rand(FFN, HIDDEN), p + "mlp.up_proj.weight": rand(FFN, HIDDEN),
                   p + "mlp.down_proj.weight": rand(HIDDEN, FFN),
                   p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
                   p + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}

    weight_map, total, n = {}, 0, layers + 1
    for k, shard in enumerate(shards(), 1):
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in shard})
        total += sum(t.numel() * 2 for t in shard.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": FFN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "max_position_embeddings": 4096, "rope_theta": 10000.0,
              "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "tie_word_embeddings": False, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return total


def peak_rss(src: Path, out: Path) -> tuple[int, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], capture_output=True, text=True, check=True)
    seconds = float(proc.stderr.strip().splitlines()[-1]) if out.name != "none" else 0.0
    return int(proc.stdout.strip()), seconds


def smollm_tokenizer_dir() -> Path:
    cache = Path(os.environ.get("ROPECONVERT_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "ropeconvert"))
    found = sorted((cache / "gguf-as-hf").glob("SmolLM2-135M-Instruct*/tokenizer.json"))
    if not found:
        sys.exit("no SmolLM2 checkpoint in the cache: run `make test` (or `ropeconvert smollm2-135m -m yarn -s 2`) once")
    return found[0].parent


def main() -> None:
    tok = smollm_tokenizer_dir()
    gib = 1024 ** 3
    with tempfile.TemporaryDirectory(prefix="gguf-memory-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        anchor, _ = peak_rss(tok, tmp / "none")
        print(f"anchor (imports + the tokenizer loaded, no weights): peak RSS {anchor / gib:.2f} GiB")
        rows = []
        for layers in (2, 12):
            src = tmp / f"llama-{layers}l"
            size = make_model(src, layers, tok)
            out = tmp / f"llama-{layers}l.gguf"
            rss, seconds = peak_rss(src, out)
            rows.append((layers, size, rss, out.stat().st_size))
            print(f"{layers:>2} layers: model {size / gib:.2f} GiB bf16 → GGUF {out.stat().st_size / gib:.2f} GiB f16 "
                  f"in {seconds:.0f} s; peak RSS {rss / gib:.2f} GiB ({rss / size:.2f} × model, "
                  f"{(rss - anchor) / gib:.2f} GiB above the anchor)")
            shutil.rmtree(src)
            out.unlink()
        (_, s0, r0, _), (_, s1, r1, _) = rows
        print(f"model grew ×{s1 / s0:.2f}; peak RSS grew ×{r1 / r0:.2f} "
              f"(largest tensor {VOCAB * HIDDEN * 4 / gib:.2f} GiB as float32)")


if __name__ == "__main__":
    main()
