"""The second real model: Gemma-3-270M (trained 32k, head_dim 256, 5:1 sliding:global, 262k SentencePiece vocabulary),
from its PyPI chunk packages through the `gemma3-270m` alias (issue #21). At a short length (CI cannot afford 64k:
bench/gemma3_270m.py measures that) the YaRN ×2 export is checked in every form the tool writes:
- the re-extended Q4_K_M GGUF: tensors are the source's bytes, llama.cpp reports the new trained context;
- the HF export (dequantized once into the cache) loads in transformers with the per-layer-type rope;
- its HF → GGUF f16 conversion (the SentencePiece tokenizer path, the norm shift on real weights) agrees with the
  HF export in llama.cpp token for token, and both GGUFs tokenize as transformers does.
"""
from __future__ import annotations

import json

import pytest

from helpers import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
TOKENS = 512
TEXTS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune",
         "café naïve 123 日本語\n\n\tend", "x <start_of_turn>user  three   spaces"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma-real") / "gemma3-270m-yarn-64k"
    proc = run_cli("gemma3-270m", "--method", "yarn", "--factor", "2", "--to", "both", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    converted = out.with_name("gemma3-270m-yarn-64k-f16.gguf")
    proc = run_cli(out, "--method", "yarn", "--factor", "2", "--replace-scaling", "--to", "gguf", "--outtype", "f16",
                   "--out", converted, "-q")
    assert proc.returncode == 0, proc.stderr
    return out, out.with_name(out.name + ".gguf"), converted


def test_re_extended_gguf_keeps_the_quantized_tensors(exports):
    from gguf import GGUFReader

    from ropeconvert.formats.source import resolve
    from ropeconvert.validators.llamacpp import gguf_info

    _, gguf, _ = exports
    source = resolve("gemma3-270m")
    new = GGUFReader(str(gguf))
    assert {t.name: bytes(t.data) for t in new.tensors} == {t.name: bytes(t.data) for t in source.reader.tensors}
    f = {k: new.fields[k].contents() for k in ("gemma3.rope.scaling.type", "gemma3.rope.scaling.factor",
                                                "gemma3.rope.scaling.original_context_length")}
    assert f == {"gemma3.rope.scaling.type": "yarn", "gemma3.rope.scaling.factor": 2.0,
                 "gemma3.rope.scaling.original_context_length": 32768}
    assert gguf_info(gguf).n_ctx_train == 65536
    proc = run_cli("verify", gguf, "--source", "gemma3-270m")  # the alias names its local file
    assert proc.returncode == 0 and "tensor bytes identical to the source" in proc.stdout, proc.stdout + proc.stderr


def test_hf_export_has_the_per_layer_rope(exports):
    from transformers import AutoConfig

    hf, _, _ = exports
    raw = json.loads((hf / "config.json").read_text())
    assert raw["model_type"] == "gemma3_text" and raw["sliding_window"] == 512 and raw["head_dim"] == 256
    assert [i for i, t in enumerate(raw["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert raw["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert raw["rope_scaling"]["rope_type"] == "yarn" and raw["rope_scaling"]["factor"] == 2.0
    config = AutoConfig.from_pretrained(hf)
    rope = getattr(config, "rope_parameters", None) or {"full_attention": config.rope_scaling}
    assert rope["full_attention"]["rope_type"] == "yarn"


def test_transformers_and_llama_cpp_agree_at_a_short_length(exports):
    from transformers import AutoTokenizer

    from ropeconvert.validators.llamacpp import gguf_tokenize
    from ropeconvert.validators.parity import parity

    hf, gguf, converted = exports
    tok = AutoTokenizer.from_pretrained(hf)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert gguf_tokenize(gguf, text) == ids and gguf_tokenize(converted, text) == ids, text
    exact, _ = parity(hf, converted, tokens=TOKENS)  # the same weights (f16) in both runtimes
    print("Gemma-3-270M yarn x2, HF vs its f16 GGUF:", exact)
    assert exact["ratio"] == pytest.approx(1.0, abs=5e-3) and exact["top1_agreement"] >= 0.98, exact
    quantized, _ = parity(hf, gguf, tokens=TOKENS)  # Q4_K_M in llama.cpp vs its dequantized copy
    print("Gemma-3-270M yarn x2, HF vs the re-extended Q4_K_M GGUF:", quantized)
    assert quantized["ratio"] == pytest.approx(1.0, abs=0.03) and quantized["top1_agreement"] >= 0.85, quantized
    assert 5 < exact["ppl_hf"] < 200  # a real model on real text, not noise
