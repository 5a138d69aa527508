"""GGUF exports run by the real llama.cpp (llama-cpp-python) against HF exports run by transformers.

Tiny random models (original context 256, real SmolLM2 tokenizer) are "sharpened" — weights ×5, Q/K ×10 more —
so that attention depends on position and every method moves perplexity by several percent: each parity check
also asserts that the extended model differs from the base model by more than the tolerance, so a GGUF whose rope
were ignored could not pass. Perplexity is compared, not logits (llama.cpp rounds activations differently).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.gguf import write_gguf_export
from ropeconvert.formats.gguf_read import open_gguf
from ropeconvert.formats.gguf_rope import read_rope
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import embedded_gguf, read_config
from ropeconvert.validators.corpus import load

from conftest import make_tiny_model
from helpers import run_cli

import llama_cpp  # noqa: E402,F401  (make installs it: a missing llama.cpp is a failure, not a skip)
from ropeconvert.validators.llamacpp import gguf_eval, gguf_info, gguf_tokenize  # noqa: E402

pytestmark = pytest.mark.llamacpp
N_TOKENS = 768  # 3 × the tiny models' original context
LONG_F = [1.0, 1.5, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]
SHORT_F = [1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]


def sharpened(out: Path, tokenizer_dir: Path, model_type: str) -> Path:
    make_tiny_model(out, tokenizer_dir, model_type=model_type)
    weights = load_file(out / "model.safetensors")
    for name, w in weights.items():
        if w.ndim == 2:
            w *= 5.0
            if "q_proj" in name or "k_proj" in name:
                w *= 10.0
            elif "qkv_proj" in name:  # phi3: Q and K rows first, then V
                w[: w.shape[0] - w.shape[0] // 4] *= 10.0
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["original_max_position_embeddings"] = 256  # Phi3Config writes 4096 by default
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def sharp(tmp_path_factory, smollm2_hf):
    root = tmp_path_factory.mktemp("sharp")
    return {mt: sharpened(root / mt, smollm2_hf, mt) for mt in ("llama", "qwen2", "phi3")}


@pytest.fixture(scope="module")
def austen_ids(smollm2_hf):
    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    return tok(load("austen")[0].text[:40000])["input_ids"]


def hf_nll(model_dir: Path, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
        nll = []
        for start in range(0, len(ids) - 1, 256):  # never the full [L, vocab] logits at once
            logits = model.lm_head(hidden[start:min(start + 256, len(ids) - 1)]).double()
            target = torch.tensor(ids[start + 1:start + 1 + logits.shape[0]])
            nll.append(torch.nn.functional.cross_entropy(logits, target, reduction="none"))
    return torch.cat(nll).numpy()


def ppl(nll: np.ndarray, past: int = 0) -> float:
    """Perplexity of the tokens at positions ≥ `past` (nll[t] scores token t + 1)."""
    return float(np.exp(nll[max(past - 1, 0):].mean()))


@pytest.fixture(scope="module")
def base_ppl(sharp, austen_ids):
    return {arch: ppl(hf_nll(path, austen_ids[:N_TOKENS]), 256) for arch, path in sharp.items()}


CASES = [
    ("llama", "linear", {"factor": 4.0}, False),
    ("llama", "ntk", {"factor": 4.0}, False),
    ("llama", "yarn", {"factor": 4.0}, False),
    ("llama", "yarn", {"factor": 4.0, "attention_factor": 1.3}, False),  # written as attn_factor = A / (1 + 0.1 ln s)
    ("llama", "yarn", {"factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.2}, False),
    ("llama", "llama3", {"factor": 4.0}, False),
    ("llama", "longrope", {"factors": LONG_F, "short_factors": SHORT_F, "factor": 4.0}, False),
    ("llama", "dynamic", {"factor": 3.0}, True),  # baked at its target 768 = the evaluated length
    ("qwen2", "linear", {"factor": 4.0}, False),
    ("qwen2", "ntk", {"factor": 4.0}, False),
    ("qwen2", "yarn", {"factor": 8.0}, False),
    ("phi3", "longrope", {"factors": LONG_F, "short_factors": SHORT_F, "factor": 4.0}, False),  # HF phi3: longrope only
]


@pytest.mark.parametrize("arch,method,knobs,static", CASES, ids=[f"{a}-{m}-{i}" for i, (a, m, _, _) in enumerate(CASES)])
def test_perplexity_parity_past_the_original_context(arch, method, knobs, static, sharp, austen_ids, base_ppl, tmp_path):
    src = sharp[arch]
    spec = build_spec(method, base_rope_from_config(read_config(src)), **knobs)
    gguf, _ = write_gguf_export(src, spec, tmp_path / "x.gguf", outtype="f32", static=static, progress=False)
    hf, _ = write_hf_export(src, spec, tmp_path / "x-hf", link=True, progress=False)
    ids = austen_ids[:N_TOKENS]
    run = gguf_eval(gguf, ids)
    ppl_gguf, ppl_hf = ppl(run.nll, 256), ppl(hf_nll(hf, ids), 256)  # the tokens past the original context
    print(f"{arch} {method} {knobs}: llama.cpp {ppl_gguf:.1f} transformers {ppl_hf:.1f} base {base_ppl[arch]:.1f}")
    assert run.n_ctx_train == spec.target_context  # llama.cpp takes the extended context as trained, no flags
    assert abs(ppl_gguf / ppl_hf - 1) < 0.01, (ppl_gguf, ppl_hf)
    assert abs(ppl_hf / base_ppl[arch] - 1) > 0.02, "the method must move perplexity more than the tolerance"
    assert np.isfinite(run.nll).all() and run.top1.shape == (N_TOKENS - 1,)


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_every_outtype_loads_and_reports_the_target_context(outtype, sharp, austen_ids, base_ppl, tmp_path):
    spec = build_spec("yarn", base_rope_from_config(read_config(sharp["llama"])), factor=4.0)
    path, _ = write_gguf_export(sharp["llama"], spec, tmp_path / "o.gguf", outtype=outtype, progress=False)
    info = gguf_info(path)
    assert info.n_ctx_train == 1024 and info.rope_freq_scale_train == pytest.approx(0.25)
    assert np.isfinite(gguf_eval(path, austen_ids[:300]).nll).all()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llamacpp_tokenizes_like_transformers(arch, sharp, tmp_path):
    spec = build_spec("linear", base_rope_from_config(read_config(sharp[arch])), factor=2.0)
    path, _ = write_gguf_export(sharp[arch], spec, tmp_path / "t.gguf", outtype="f16", progress=False)
    text = "<|im_start|>user\nHow many 12345 rooms, Mr. Darcy?<|im_end|>\n" + load("austen")[1].text[:4000]
    tok = AutoTokenizer.from_pretrained(sharp[arch])  # qwen2 gets transformers' Qwen2 split regex
    assert gguf_tokenize(path, text) == tok(text)["input_ids"]
    reader = open_gguf(path)
    assert reader.fields["tokenizer.ggml.pre"].contents() == {"llama": "smollm", "qwen2": "qwen2"}[arch]


def test_reextended_embedded_q4_1_is_byte_identical_and_honoured(tmp_path):
    out = tmp_path / "smol-yarn.gguf"
    proc = run_cli("smollm2-135m", "--method", "yarn", "--factor", "4", "--to", "gguf", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    src, new = open_gguf(embedded_gguf()), open_gguf(out)
    old = {t.name: t for t in src.tensors}
    assert [t.name for t in new.tensors] == list(old)
    for t in new.tensors:
        assert t.tensor_type == old[t.name].tensor_type
        assert np.asarray(t.data).tobytes() == np.asarray(old[t.name].data).tobytes(), t.name
    rope = read_rope(new)
    assert (rope.context_length, rope.original_context, rope.scaling_type, rope.scaling_factor) == (32768, 8192, "yarn", 4.0)
    kept = {k for k in src.fields if not k.startswith(("GGUF.", "llama.rope", "llama.context_length"))}
    assert all(new.fields[k].contents() == src.fields[k].contents() for k in kept)
    assert gguf_info(out).n_ctx_train == 32768


@pytest.mark.slow
@pytest.mark.parametrize("method", ["yarn", "llama3"])
def test_real_smollm2_static_methods_parity(method, smollm2_hf, austen_ids, tmp_path):
    """The real model: YaRN and llama3 factors apply at every length in both runtimes, so 1,024 tokens suffice."""
    spec = build_spec(method, base_rope_from_config(read_config(smollm2_hf)), factor=4.0)
    gguf, _ = write_gguf_export(smollm2_hf, spec, tmp_path / "s.gguf", outtype="f16", progress=False)
    hf, _ = write_hf_export(smollm2_hf, spec, tmp_path / "s-hf", link=True, progress=False)
    ids = austen_ids[:1024]
    ppl_gguf, ppl_hf = gguf_eval(gguf, ids).perplexity, ppl(hf_nll(hf, ids))
    print(f"SmolLM2-135M {method}×4, 1024 tokens: llama.cpp {ppl_gguf:.3f} transformers {ppl_hf:.3f}")
    assert abs(ppl_gguf / ppl_hf - 1) < 0.01
    assert math.isfinite(ppl_hf) and 5 < ppl_hf < 200  # a real model on real text, not noise
