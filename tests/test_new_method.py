"""A brand-new pure frequency method, defined and registered in this file with the decorator alone, exports to HF and
GGUF through the normal pipeline: transformers' own rotary embedding on the HF export computes its RopeSpec,
llama.cpp's perplexity on the GGUF equals transformers' on the HF export, and `inspect` / `verify` read both back —
with no other file knowing the method (issue 17, "What must be shown").

The method: f_i = 1 + (s − 1)·(i/(n − 1))², a made-up per-pair rule (highest frequency kept, lowest divided by s).
It declares kind per_pair and no HF rope_type of its own, so it travels in the generic per-pair forms (HF: longrope
with long = short factors; GGUF: rope_freqs, or equal long/short factors on phi3) — which the last test checks for a
per_pair spec of a method nothing has registered at all.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ropeconvert.convert import pipeline
from ropeconvert.convert.methods import METHODS, rope_method
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.spec import PER_PAIR, BaseRope, RopeSpec, resolve_target

from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.gguf_rope import FREQS, LONG, SHORT, gguf_rope, read_rope, spec_from_gguf

from helpers import run_cli
from test_gguf_llamacpp import N_TOKENS, hf_nll, ppl, sharpened
from test_gguf_rope import llamacpp_rope, rope_only_gguf

pytestmark = pytest.mark.llamacpp
NAME = "quadratic-test"


def quadratic(base: BaseRope, *, factor: float | None = None, target_context: int | None = None) -> RopeSpec:
    s, target = resolve_target(base, factor, target_context)
    i = np.arange(base.n_pairs, dtype=np.float64)
    f = 1.0 + (s - 1.0) * (i / (base.n_pairs - 1)) ** 2
    return RopeSpec(method=NAME, base=base, target_context=target, rope_theta=base.rope_theta, factors=tuple(f),
                    params={"factor": s})


@pytest.fixture(scope="module")
def registered():
    rope_method(NAME, paper="https://example.org/made-up", summary="test: quadratic per-pair divisors",
                kind=PER_PAIR)(quadratic)
    try:
        yield METHODS.get(NAME)
    finally:
        METHODS.unregister(NAME)
    assert NAME not in METHODS


def run_convert(**kw):
    return pipeline.convert(ConvertOptions(**kw))


@pytest.fixture(scope="module")
def exported(registered, tmp_path_factory, smollm2_hf):
    root = tmp_path_factory.mktemp("newmethod")
    src = sharpened(root / "llama", smollm2_hf, "llama")  # attention depends on position: the rope shows in ppl
    result = run_convert(model=str(src), method=NAME, to="both", out=root / "quad", knobs={"factor": 8.0},
                         outtype="f32", progress=False)
    return src, result


def test_registry_knows_the_method_and_its_knobs(registered):
    assert registered.kind == PER_PAIR and registered.hf is None
    assert [(k.name, k.cli_type, k.default) for k in registered.knobs] == [("factor", float, None),
                                                                             ("target_context", int, None)]


def test_transformers_rotary_embedding_computes_the_spec(exported):
    from transformers import AutoModelForCausalLM

    _, result = exported
    spec = result.spec
    assert (spec.method, spec.kind, spec.target_context) == (NAME, PER_PAIR, 2048)
    config = json.loads((result.outputs["hf"] / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "longrope"  # the generic per-pair form: long = short factors
    model = AutoModelForCausalLM.from_pretrained(result.outputs["hf"], dtype=torch.float32)
    rotary = model.model.rotary_emb
    x = torch.zeros(1, 1, 16)
    for n in (200, 1000):  # within and past the original 256 tokens: transformers switches short → long there
        pos = torch.arange(n)[None]
        cos, sin = rotary(x, pos)
        angles = np.arange(n)[:, None] * spec.inv_freq(n)[None, :]
        want = np.concatenate([angles, angles], axis=1)  # rotate-half layout
        np.testing.assert_allclose(cos[0].double().numpy(), np.cos(want) * spec.attention_factor, atol=2e-4)
        np.testing.assert_allclose(sin[0].double().numpy(), np.sin(want) * spec.attention_factor, atol=2e-4)
    assert rotary.attention_scaling == pytest.approx(spec.attention_factor)


def test_llamacpp_perplexity_matches_transformers(exported, smollm2_hf):
    from transformers import AutoTokenizer

    from ropeconvert.validators.corpus import load
    from ropeconvert.validators.llamacpp import gguf_eval

    src, result = exported
    ids = AutoTokenizer.from_pretrained(smollm2_hf)(load("austen")[0].text[:40000])["input_ids"][:N_TOKENS]
    run = gguf_eval(result.outputs["gguf"], ids)
    ppl_gguf, ppl_hf, ppl_base = ppl(run.nll, 256), ppl(hf_nll(result.outputs["hf"], ids), 256), ppl(hf_nll(src, ids), 256)
    print(f"{NAME}: llama.cpp {ppl_gguf:.2f} transformers {ppl_hf:.2f} base {ppl_base:.2f}")
    assert run.n_ctx_train == 2048
    assert abs(ppl_gguf / ppl_hf - 1) < 0.01, (ppl_gguf, ppl_hf)
    assert abs(ppl_hf / ppl_base - 1) > 0.02, "the method must move perplexity more than the tolerance"


def test_inspect_and_verify_read_both_exports_back(exported):
    """In a fresh process, where the method is not registered: the files alone carry it."""
    _, result = exported
    hf, gguf = result.outputs["hf"], result.outputs["gguf"]
    info = json.loads(run_cli("inspect", hf, "--json").stdout)
    assert (info["rope_type"], info["target_context"], info["attention_factor"]) == ("longrope", 2048, 1.0)
    assert info["factors (long)"] == info["factors (short)"] == "8 values, min 1, max 8, first 1, last 8"
    info = json.loads(run_cli("inspect", gguf, "--json").stdout)
    assert info["context_length"] == 2048 and info["rope_freqs.weight"].startswith("8 values, min 1, max 8")
    stored = RopeSpec.from_dict(json.loads(info["ropeconvert.spec"]))
    assert stored == result.spec and stored.kind == PER_PAIR
    for path in (hf, gguf):
        proc = run_cli("verify", path)
        assert proc.returncode == 0 and proc.stdout.strip().endswith(f"{path}: intact"), proc.stdout + proc.stderr


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_a_per_pair_kind_from_any_method_is_written_by_its_kind(arch, tmp_path):
    """The writer switches on the kind: a per_pair spec of a method it has never heard of gets the generic form."""
    base = BaseRope(head_dim=16, rotary_dim=16, rope_theta=10000.0, original_context=256, arch=arch)
    spec = RopeSpec(method="made-up", base=base, target_context=1024, rope_theta=10000.0, attention_factor=1.2,
                    factors=(1.0, 1.3, 1.1, 2.0, 3.5, 2.5, 4.0, 4.0))
    if arch == "qwen2":
        with pytest.raises(UnsupportedError) as refused:
            gguf_rope(spec, arch)
        assert refused.value.one_line().startswith("qwen2 GGUFs cannot express made-up")
        return
    reader = rope_only_gguf(spec, arch, False, tmp_path / "p.gguf")
    rope = read_rope(reader)
    assert set(rope.tensors) == ({FREQS} if arch == "llama" else {LONG, SHORT})
    assert rope.scaling_type == ("none" if arch == "llama" else "longrope") and rope.attn_factor == pytest.approx(1.2)
    for n_ctx in (200, 1024):  # phi3's equal long and short factors: the same divisors at every length
        theta, mag = llamacpp_rope(rope, arch, n_ctx)
        np.testing.assert_allclose(theta, spec.inv_freq(n_ctx), rtol=2e-6)
        assert mag == pytest.approx(1.2, rel=1e-6)
    assert spec_from_gguf(reader) == spec and spec_from_gguf(reader).kind == "per_pair"
