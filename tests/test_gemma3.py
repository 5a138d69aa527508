"""Gemma 3 (issue #21 item 1) on a tiny random gemma3_text model: sliding-window layers with their own rope base and
global layers, a small original context (128) and window (32) so the long regime is reached in a few hundred tokens.

Only the global layers are extended (the per-layer oracle under both transformers versions is in
tests/test_oracle_transformers.py); here the HF export in transformers and the GGUF export in llama.cpp give the
same perplexity past the trained length, a Gemma GGUF reads back into the same HF weights (norms un-shifted), a
Gemma GGUF is re-extended without re-quantizing, and what llama.cpp's gemma3 graph cannot run is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_tiny_model
from helpers import run_cli

ORIGINAL = 128
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory, small_tokenizer):
    import torch

    model = make_tiny_model(tmp_path_factory.mktemp("gemma") / "tiny-gemma3", small_tokenizer,
                            model_type="gemma3_text", original_context=ORIGINAL, rope_theta=100000.0,
                            layers=len(LAYER_TYPES), layer_types=LAYER_TYPES, sliding_window=32,
                            rope_local_base_freq=10000.0, query_pre_attn_scalar=16, pad_token_id=0)
    # transformers initialises Gemma's RMSNorm weights to 0 (it multiplies by 1 + w): random ones make a wrong
    # GGUF shift of the norms visible
    from safetensors.torch import load_file, save_file

    path = model / "model.safetensors"
    weights = load_file(path)
    gen = torch.Generator().manual_seed(1)
    for name, t in weights.items():
        if name.endswith("norm.weight"):
            weights[name] = 0.3 * torch.randn(t.shape, generator=gen)
    save_file(weights, path, metadata={"format": "pt"})
    return model


def _fields(path):
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("tokenizer.")}


@pytest.mark.llamacpp
@pytest.mark.parametrize("method,knobs", [("yarn", {"factor": 2.0}), ("linear", {"factor": 2.0}),
                                          ("ntk", {"factor": 2.0})])
def test_hf_and_gguf_agree_past_the_trained_length(tiny_gemma3, tmp_path, method, knobs):
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert
    from ropeconvert.validators.parity import parity

    out = tmp_path / f"gemma-{method}"
    convert(ConvertOptions(str(tiny_gemma3), method, out=out, to="both", knobs=knobs, outtype="f32", progress=False))
    config = json.loads((out / "config.json").read_text())
    assert config["layer_types"] == LAYER_TYPES and config["sliding_window"] == 32
    assert config["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    keys = _fields(f"{out}.gguf")
    assert keys["gemma3.attention.sliding_window"] == 32
    assert keys["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in LAYER_TYPES]
    assert keys["gemma3.rope.freq_base_swa"] == 10000.0 and "gemma3.rope.scaling.attn_factor" not in keys
    measured, _ = parity(out, out.with_name(out.name + ".gguf"), tokens=ORIGINAL + 160)
    assert measured["ratio"] == pytest.approx(1.0, abs=2e-3), measured
    assert measured["top1_agreement"] >= 0.99 and measured["max_abs_nll_diff"] < 0.02, measured


@pytest.mark.llamacpp
def test_gguf_source_reads_back_and_re_extends(tiny_gemma3, tmp_path, monkeypatch):
    """A Gemma GGUF (the real model comes as one) dequantizes into the same HF weights and config, and re-extends
    as a GGUF whose tensors are the source's bytes."""
    monkeypatch.setenv("ROPECONVERT_CACHE", str(tmp_path / "cache"))  # the dequantized copy goes there
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from ropeconvert.formats.source import hf_checkpoint, resolve

    first = tmp_path / "gemma-yarn.gguf"
    r = run_cli(tiny_gemma3, "--method", "yarn", "--factor", "2", "--to", "gguf", "--outtype", "f32", "--out", first, "-q")
    assert r.returncode == 0, r.stderr
    source = resolve(str(first))
    assert source.arch == "gemma3" and source.existing_scaling
    back = hf_checkpoint(source, progress=False)
    config = json.loads((back / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["layer_types"] == LAYER_TYPES
    assert (config["sliding_window"], config["rope_local_base_freq"], config["query_pre_attn_scalar"]) == (32, 1e4, 16)
    assert config["hidden_activation"] == "gelu_pytorch_tanh" and config["rope_theta"] == 100000.0
    ours, theirs = load_file(back / "model.safetensors"), load_file(tiny_gemma3 / "model.safetensors")
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for name, arr in theirs.items():
        if name in ours:
            np.testing.assert_allclose(ours[name], arr.astype(np.float32), atol=1e-6, err_msg=name)
    # re-extension: ×4 over the original instead of ×2, tensors copied as they are
    again = tmp_path / "gemma-yarn-x4.gguf"
    r = run_cli(first, "--method", "yarn", "--factor", "4", "--replace-scaling", "--to", "gguf", "--out", again, "-q")
    assert r.returncode == 0, r.stderr
    keys = _fields(again)
    assert keys["gemma3.rope.scaling.factor"] == 4.0 and keys["gemma3.context_length"] == 4 * ORIGINAL
    assert keys["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in LAYER_TYPES]
    assert keys["gemma3.rope.freq_base_swa"] == 10000.0
    src = {t.name: bytes(t.data) for t in GGUFReader(str(first)).tensors}
    assert {t.name: bytes(t.data) for t in GGUFReader(str(again)).tensors} == src
    from ropeconvert.validators.llamacpp import gguf_eval

    ppl = gguf_eval(again, list(range(1, 300)), n_ctx=4 * ORIGINAL).perplexity  # llama.cpp runs it past 128
    assert np.isfinite(ppl) and ppl > 1


@pytest.mark.parametrize("args,says", [
    (("--method", "llama3", "--factor", "4", "--to", "gguf"), "gemma3 GGUFs cannot express llama3"),
    (("--method", "longrope", "--factor", "2", "--to", "gguf"), "gemma3 GGUFs cannot express"),
    (("--method", "yarn", "--factor", "2", "--attention-factor", "1.2", "--to", "gguf"), "custom attention factor"),
    (("--method", "selfextend", "--factor", "2", "--to", "hf"), "DPE attention does not run gemma3_text"),
])
def test_refusals(tiny_gemma3, tmp_path, args, says):
    out = tmp_path / "refused"
    r = run_cli(tiny_gemma3, *args, "--out", out)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert not out.exists() and not out.with_name("refused.gguf").exists()


def test_packaged_model_join_refuses_what_it_cannot_trust(tmp_path, monkeypatch):
    """The gemma3-270m alias: a missing package and chunks that do not join into the published digest are one
    line each, and a failed join leaves nothing in the cache; a good join is stamped and reused."""
    import hashlib
    import sys
    import types

    from ropeconvert.errors import InputError
    from ropeconvert.formats import packaged_models as pm

    monkeypatch.setattr(pm, "GEMMA3_270M_PACKAGE", "no_such_gemma_package")
    with pytest.raises(InputError, match="not installed"):
        pm.gemma3_270m(tmp_path / "cache")
    chunks = [tmp_path / f"c{i}" for i in range(3)]
    for i, c in enumerate(chunks):
        c.write_bytes(bytes([i]) * 1000)
    fake = types.ModuleType("fake_gemma_package")
    fake.MODEL_NAME, fake.EXPECTED_SHA256, fake.chunk_paths = "m.gguf", "0" * 64, lambda: chunks
    monkeypatch.setitem(sys.modules, "fake_gemma_package", fake)
    monkeypatch.setattr(pm.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(pm, "GEMMA3_270M_PACKAGE", "fake_gemma_package")
    with pytest.raises(InputError, match="sha256 differs"):
        pm.gemma3_270m(tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    fake.EXPECTED_SHA256 = hashlib.sha256(b"".join(c.read_bytes() for c in chunks)).hexdigest()
    path = pm.gemma3_270m(tmp_path / "cache")
    assert path.read_bytes() == b"".join(c.read_bytes() for c in chunks)
    chunks[0].unlink()  # joined and stamped: not read again
    assert pm.gemma3_270m(tmp_path / "cache") == path


def test_check_runtimes_reports_gemma_rows_without_measuring(tiny_gemma3, tmp_path):
    """check-runtimes does not measure per-layer-type ropes (tests/test_runtimes.py does): it says so per runtime
    instead of failing, and still shows the expected matrix."""
    out = tmp_path / "gemma-yarn-hf"
    assert run_cli(tiny_gemma3, "--method", "yarn", "--factor", "2", "--to", "hf", "--out", out, "-q").returncode == 0
    r = run_cli("check-runtimes", out)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "not measured by check-runtimes" in line]
    assert len(rows) == 6 and any(line.startswith("mistral.rs") and "not supported" in line for line in rows), r.stdout
