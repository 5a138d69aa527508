"""The config variants users bring (issue #21 item 3), each extended ×2 to HF and GGUF and run past its trained length
in transformers and in llama.cpp on the same tokens: an explicit head_dim that is not hidden/heads (Mistral-Nemo
style, on llama, mistral and qwen3), untied input/output embeddings, and a partial rotary dimension (phi3,
partial_rotary_factor 0.5: factor arrays and llama.cpp's rope.dimension_count are rotary_dim/2 and rotary_dim).
The tiny models are saved by transformers 5, so their config carries `rope_parameters` (the transformers-5 form)."""
from __future__ import annotations

import json

import pytest

from conftest import make_tiny_model

pytestmark = pytest.mark.llamacpp

ORIGINAL = 256
VARIANTS = {  # name: (model_type, method, make_tiny_model keywords)
    "llama-head-dim-32": ("llama", "yarn", {"head_dim": 32, "hidden_size": 64}),
    "mistral-head-dim-32": ("mistral", "yarn", {"head_dim": 32, "hidden_size": 64}),
    "qwen3-head-dim-32": ("qwen3", "yarn", {"head_dim": 32, "hidden_size": 64}),
    "llama-untied": ("llama", "yarn", {"tie_word_embeddings": False}),
    "phi3-partial-rotary": ("phi3", "ntk", {"partial_rotary_factor": 0.5, "original_max_position_embeddings": ORIGINAL,
                                            "pad_token_id": 2}),  # Phi3Config's default pad id is outside the vocab
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_extends_and_both_runtimes_agree_past_the_trained_length(name, small_tokenizer, tmp_path):
    from gguf import GGUFReader

    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert
    from ropeconvert.validators.parity import parity

    model_type, method, extra = VARIANTS[name]
    # the directory name becomes the GGUF's general.name: llama.cpp 0.3.36 refuses to load a phi3 GGUF named "phi…"
    # whose vocabulary lacks Phi-3's own special tokens (measured: the same file named otherwise loads), and this
    # test's vocabulary is a tiny BPE one
    model = make_tiny_model(tmp_path / name.replace("phi3", "tiny"), small_tokenizer, model_type=model_type, original_context=ORIGINAL,
                            **extra)
    config = json.loads((model / "config.json").read_text())
    assert "rope_parameters" in config  # the transformers-5 form is what the source carries
    if "hidden_size" in extra:  # make_tiny_model sets hidden = heads × head_dim: override it
        assert config["hidden_size"] == 64 and config["head_dim"] * config["num_attention_heads"] == 128
    out = tmp_path / f"{name}-x2"
    result = convert(ConvertOptions(str(model), method, out=out, to="both", knobs={"factor": 2.0}, progress=False))
    spec = result.spec
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rotary = int(head_dim * config.get("partial_rotary_factor", 1.0))
    assert (spec.base.head_dim, spec.base.rotary_dim, spec.target_context) == (head_dim, rotary, 2 * ORIGINAL)
    fields = GGUFReader(f"{out}.gguf").fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert int(fields[f"{arch}.rope.dimension_count"].parts[-1][0]) == rotary
    assert ("output.weight" in {t.name for t in GGUFReader(f"{out}.gguf").tensors}) == (
        not config.get("tie_word_embeddings", True))
    measured, _ = parity(out, out.with_name(out.name + ".gguf"), tokens=ORIGINAL + 160)  # past the trained 256
    assert measured["ratio"] == pytest.approx(1.0, abs=2e-3), measured
    assert measured["top1_agreement"] >= 0.99 and measured["max_abs_nll_diff"] < 0.02, measured
