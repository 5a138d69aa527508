"""The in-place rope swap: swapping a spec into a loaded base model gives the logits of the HF export of that spec
(loaded in stock transformers) for every method, and swapping back restores the base."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config
from ropeconvert.validators import runtime as rt

N_TOKENS = 400  # past the tiny models' original 256, inside the 2× target

METHODS = {
    "linear": dict(factor=2.0),
    "ntk": dict(factor=2.0),
    "dynamic": dict(factor=2.0),
    "yarn": dict(factor=2.0, beta_fast=24.0, beta_slow=2.0),
    "llama3": dict(factor=2.0),
    "longrope": dict(factor=2.0, factors=list(np.linspace(1.0, 2.5, 8)), short_factors=list(np.linspace(1.0, 1.2, 8))),
}


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


@pytest.fixture(scope="module")
def base_runtime(tiny_llama):
    return rt.load(tiny_llama, device="cpu")


def _random_ids(model_dir, n: int, seed: int) -> torch.Tensor:
    """Random token ids the model's own vocabulary holds (past the special tokens 0-2)."""
    vocab = int(read_config(model_dir)["vocab_size"])
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ids(tiny_llama):
    return _random_ids(tiny_llama, N_TOKENS, 0)


@pytest.mark.parametrize("method", list(METHODS))
def test_swap_matches_export(method, tiny_llama, base_runtime, ids, tmp_path):
    base = base_rope_from_config(read_config(tiny_llama))
    spec = build_spec(method, base, **METHODS[method])
    export, _ = write_hf_export(tiny_llama, spec, tmp_path / method, progress=False)
    exported = rt.load(export, device="cpu")
    assert type(exported.model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"  # stock transformers rope
    model = base_runtime.model
    before = _logits(model, ids)
    try:
        rt.set_rope(model, spec)
        for n in (N_TOKENS, 200):  # long, then short: dynamic resets, longrope switches back to short factors
            want = _logits(exported.model, ids[:, :n])
            got = _logits(model, ids[:, :n])
            assert torch.allclose(got, want, atol=2e-4, rtol=0), (method, n, (got - want).abs().max())
        if method in ("yarn", "linear", "longrope"):  # a real change past the original length, not a no-op
            assert (got := _logits(model, ids)).sub(before).abs().max() > 1e-3
    finally:
        rt.restore_rope(model)
    assert torch.equal(_logits(model, ids), before)


def test_swap_none_is_plain_base_and_cheap(base_runtime, ids):
    model = base_runtime.model
    before = _logits(model, ids)
    base = base_runtime.base
    spec = build_spec("yarn", base, factor=4.0)
    import time

    t0 = time.perf_counter()
    for _ in range(200):  # the LongRoPE search swaps once per candidate
        rt.set_rope(model, spec)
    per_swap = (time.perf_counter() - t0) / 200
    rt.set_rope(model, None)
    assert torch.allclose(_logits(model, ids), before, atol=1e-6)
    rt.restore_rope(model)
    assert per_swap < 0.05  # generous: a swap is a 8-value numpy computation, not a reload


def _decode_logits(model, prompt, steps):
    """Last-position logits of a prefill and then of `steps` single-token forwards against the KV cache."""
    with torch.inference_mode():
        out = model(input_ids=prompt[:, :-steps], use_cache=True)
        rows = [out.logits[0, -1]]
        for i in range(prompt.shape[1] - steps, prompt.shape[1]):
            out = model(input_ids=prompt[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
            rows.append(out.logits[0, -1])
    return torch.stack(rows).float()


def test_dynamic_decoding_matches_transformers(tiny_llama, base_runtime, tmp_path):
    """Token-by-token decoding across the original length: the stateful dynamic-NTK table must evolve as
    transformers' does (recomputed at every new length past the original)."""
    base = base_runtime.base
    spec = build_spec("dynamic", base, factor=2.0)
    export, _ = write_hf_export(tiny_llama, spec, tmp_path / "dyn", progress=False)
    exported = rt.load(export, device="cpu")
    prompt = _random_ids(tiny_llama, 270, 1)
    want = _decode_logits(exported.model, prompt, 20)  # prefill 250, then 20 steps to 270 (> 256)
    rt.set_rope(base_runtime.model, spec)
    try:
        got = _decode_logits(base_runtime.model, prompt, 20)
    finally:
        rt.restore_rope(base_runtime.model)
    assert torch.allclose(got, want, atol=2e-4, rtol=0), (got - want).abs().max()


def test_load_with_spec_and_runtime_description(tiny_llama):
    base = base_rope_from_config(read_config(tiny_llama))
    spec = build_spec("yarn", base, factor=2.0)
    r = rt.load(tiny_llama, spec, device="cpu")
    assert r.spec == spec and isinstance(r.model.model.rotary_emb, rt.SpecRotary)
    assert r.describe()["dtype"] == "float32" and r.describe()["device"] == "cpu"
    assert r.bos_id == 1 and 2 in r.eos_ids


@pytest.mark.gpu
def test_cuda_runtime_is_bf16_sdpa_and_close_to_cpu(tiny_llama):
    ids = _random_ids(tiny_llama, N_TOKENS, 0)
    base = base_rope_from_config(read_config(tiny_llama))
    spec = build_spec("yarn", base, factor=2.0)
    gpu = rt.load(tiny_llama, spec, device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.model.config._attn_implementation == "sdpa"
    cpu = rt.load(tiny_llama, spec, device="cpu")
    got = _logits(gpu.model, ids.cuda()).cpu()
    want = _logits(cpu.model, ids)
    assert (got - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize("config, lifted", [
    ({"model_type": "mistral", "sliding_window": 4096}, 4096),  # pitfall 14: it would hide the haystack past 4k
    ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}, None),  # set but off
    ({"model_type": "mistral", "sliding_window": None}, None),
    ({"model_type": "gemma3_text", "sliding_window": 512}, None),  # part of the model: its layers keep their rope
])
def test_the_window_a_long_context_evaluation_lifts(config, lifted):
    from ropeconvert.formats.archs import window_to_lift

    assert window_to_lift(config) == lifted


def test_a_mistral_window_is_lifted_on_load(tmp_path, small_tokenizer):
    from conftest import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "mistral", small_tokenizer, model_type="mistral", sliding_window=64)
    runtime = rt.load(model_dir, device="cpu")
    try:
        assert runtime.model.config.sliding_window is None
        assert "sliding window (64) disabled for long-context evaluation" in runtime.notes
    finally:
        runtime.close()
