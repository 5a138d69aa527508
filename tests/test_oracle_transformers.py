"""Oracle: the exported config, read by transformers' own config class and rotary embedding, gives exactly the
frequencies and attention factor RopeSpec computes (rel. error ≤ 1e-6), for every rope type transformers knows.

Runs unchanged under transformers 5.x (main env) and 4.x (the second CI env, see Makefile `test-tf4`).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf_config import base_rope_from_config, hf_config_for, spec_from_hf_config

# (model_type, head_dim, theta, original context)
MODELS = [
    ("llama", 64, 100000.0, 8192),   # SmolLM2-like
    ("llama", 128, 10000.0, 4096),   # Llama-2-like
    ("qwen2", 128, 1000000.0, 32768),
    ("mistral", 128, 1000000.0, 32768),
    ("llama", 96, 500000.0, 8192),
]
CASES = [
    ("linear", {"factor": 2.0}),
    ("linear", {"target_times": 3}),  # --target-context 3·L
    ("dynamic", {"factor": 2.0}),
    ("dynamic", {"factor": 1.5}),
    ("yarn", {"factor": 4.0}),
    ("yarn", {"factor": 16.0, "beta_fast": 128.0, "beta_slow": 2.0}),
    ("yarn", {"factor": 8.0, "attention_factor": 0.9}),
    ("yarn", {"factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0}),
    ("llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    ("llama3", {"factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0}),
    ("longrope", {"factor": 4.0, "long": True, "short": True}),
    ("longrope", {"factor": 8.0, "long": True, "short": False}),
]


def tiny_config(model_type: str, head_dim: int, theta: float, orig: int) -> dict:
    heads = 4
    return {
        "model_type": model_type, "architectures": ["LlamaForCausalLM"], "hidden_size": head_dim * heads,
        "num_attention_heads": heads, "num_key_value_heads": 2, "head_dim": head_dim, "intermediate_size": 64,
        "num_hidden_layers": 1, "vocab_size": 64, "rope_theta": theta, "max_position_embeddings": orig,
    }


def make_spec(method, knobs, base):
    knobs = dict(knobs)
    if "target_times" in knobs:
        knobs["target_context"] = knobs.pop("target_times") * base.original_context
    if method == "longrope":
        n = base.n_pairs
        long = np.round(np.linspace(1.0, 1.3 * knobs["factor"], n), 2)
        knobs["factors"] = list(long) if knobs.pop("long") else None
        knobs["short_factors"] = list(np.round(np.linspace(1.0, 2.0, n), 2)) if knobs.pop("short") else None
    return build_spec(method, base, **knobs)


def transformers_rope(config_dir, seq_len):
    """inv_freq and attention scaling that the model's own rotary embedding uses at `seq_len` positions."""
    config = AutoConfig.from_pretrained(config_dir)
    model_type = config.model_type
    import importlib

    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    cls = getattr(modeling, f"{model_type.capitalize()}RotaryEmbedding")
    rotary = cls(config=config)
    x = torch.zeros(1, seq_len, 8)
    pos = torch.arange(seq_len)[None]
    rotary(x, pos)  # dynamic / longrope update their frequencies in forward
    return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m[0]}-d{m[1]}-t{m[2]:g}-L{m[3]}")
@pytest.mark.parametrize("method,knobs", CASES, ids=lambda c: str(c))
def test_exported_config_matches_transformers(tmp_path, model, method, knobs):
    config = tiny_config(*model)
    base = base_rope_from_config(config)
    spec = make_spec(method, knobs, base)
    exported = hf_config_for(spec, config)
    (tmp_path / "config.json").write_text(json.dumps(exported))
    lengths = [spec.original_context // 2, spec.original_context + 1, spec.target_context]
    for seq_len in lengths:
        inv_tf, attn_tf = transformers_rope(tmp_path, seq_len)
        ours = spec.inv_freq(seq_len)
        np.testing.assert_allclose(inv_tf, ours, rtol=1e-6, err_msg=f"inv_freq at {seq_len}")
        assert attn_tf == pytest.approx(spec.attention_factor, rel=1e-6)
    # and the config reads back into the same spec
    again = spec_from_hf_config(exported)
    np.testing.assert_allclose(again.inv_freq(spec.target_context), spec.inv_freq(spec.target_context), rtol=1e-12)
    assert again.attention_factor == pytest.approx(spec.attention_factor, rel=1e-12)
    assert again.target_context == spec.target_context


@pytest.mark.parametrize("factor", [1.5, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("model", MODELS[:3])
def test_static_ntk_theta(tmp_path, model, factor):
    config = tiny_config(*model)
    base = base_rope_from_config(config)
    spec = build_spec("ntk", base, factor=factor)
    exported = hf_config_for(spec, config)
    d = base.rotary_dim
    assert exported["rope_theta"] == pytest.approx(model[2] * factor ** (d / (d - 2)), rel=1e-12)
    (tmp_path / "config.json").write_text(json.dumps(exported))
    inv_tf, attn_tf = transformers_rope(tmp_path, spec.target_context)
    np.testing.assert_allclose(inv_tf, spec.inv_freq(spec.target_context), rtol=1e-6)
    assert attn_tf == 1.0


@pytest.mark.parametrize("attention", [1.0, 1.25])
@pytest.mark.parametrize("model", MODELS[:3], ids=lambda m: f"{m[0]}-d{m[1]}")
def test_generic_per_pair_form_matches_transformers(tmp_path, model, attention):
    """A per_pair spec (no native rope_type) goes out as longrope with long = short factors and the attention factor
    always written: transformers then uses exactly these divisors at every length."""
    from ropeconvert.convert.spec import PER_PAIR, RopeSpec

    config = tiny_config(*model)
    base = base_rope_from_config(config)
    f = 1.0 + 3.0 * np.random.default_rng(0).random(base.n_pairs)  # arbitrary and not monotone
    spec = RopeSpec(method="made-up", base=base, target_context=3 * base.original_context, rope_theta=base.rope_theta,
                    factors=tuple(f), attention_factor=attention)
    assert spec.kind == PER_PAIR
    exported = hf_config_for(spec, config)
    assert exported["rope_scaling"]["rope_type"] == "longrope" and exported["max_position_embeddings"] == spec.target_context
    (tmp_path / "config.json").write_text(json.dumps(exported))
    for seq_len in (spec.original_context // 2, spec.original_context + 1, spec.target_context):
        inv_tf, attn_tf = transformers_rope(tmp_path, seq_len)
        np.testing.assert_allclose(inv_tf, spec.inv_freq(seq_len), rtol=1e-6, err_msg=f"inv_freq at {seq_len}")
        assert attn_tf == pytest.approx(attention, rel=1e-6)
    again = spec_from_hf_config(exported)  # read back as longrope: the same rope
    for n in (spec.original_context, spec.target_context):
        np.testing.assert_allclose(again.inv_freq(n), spec.inv_freq(n), rtol=1e-12)
    assert again.attention_factor == pytest.approx(attention, rel=1e-12)


# Gemma 3: only the global (full-attention) layers are extended; the sliding layers keep rope_local_base_freq.
GEMMA_CASES = [("linear", {"factor": 2.0}), ("ntk", {"factor": 2.0}), ("yarn", {"factor": 4.0}),
               ("yarn", {"factor": 8.0, "attention_factor": 0.9}), ("dynamic", {"factor": 2.0}),
               ("llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
               ("longrope", {"factor": 4.0, "long": True, "short": True})]


def gemma3_rope(config_dir, seq_len):
    """{layer_type: (inv_freq, attention scaling)} of transformers' own Gemma 3 rotary embeddings at `seq_len`:
    one module per layer type in 5.x, `rotary_emb` + `rotary_emb_local` in 4.x."""
    from transformers.models.gemma3 import modeling_gemma3 as m

    config = AutoConfig.from_pretrained(config_dir)
    x, pos = torch.zeros(1, seq_len, 8), torch.arange(seq_len)[None]
    rotary = m.Gemma3RotaryEmbedding(config=config)
    out = {}
    if hasattr(rotary, "layer_types"):  # transformers 5
        for layer_type in ("full_attention", "sliding_attention"):
            rotary(x, pos, layer_type)
            out[layer_type] = (getattr(rotary, f"{layer_type}_inv_freq").double().numpy(),
                               float(getattr(rotary, f"{layer_type}_attention_scaling")))
        return out
    rotary(x, pos)
    out["full_attention"] = (rotary.inv_freq.double().numpy(), float(rotary.attention_scaling))
    import copy

    local = copy.deepcopy(config)  # what Gemma3TextModel builds its rotary_emb_local from (4.57)
    local.rope_theta, local.rope_scaling = config.rope_local_base_freq, {"rope_type": "default"}
    rotary = m.Gemma3RotaryEmbedding(config=local)
    out["sliding_attention"] = (rotary.inv_freq.double().numpy(), float(rotary.attention_scaling))
    return out


@pytest.mark.parametrize("method,knobs", GEMMA_CASES, ids=lambda c: str(c))
def test_gemma3_extends_the_global_layers_only(tmp_path, method, knobs):
    config = {**tiny_config("gemma3_text", 64, 1000000.0, 4096), "architectures": ["Gemma3ForCausalLM"],
              "num_hidden_layers": 6, "sliding_window": 512, "rope_local_base_freq": 10000.0,
              "query_pre_attn_scalar": 64}
    base = base_rope_from_config(config)
    spec = make_spec(method, knobs, base)
    exported = hf_config_for(spec, config)
    assert exported["layer_types"].count("full_attention") == 1 and exported["sliding_window"] == 512
    assert exported["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    # the runtimes take max_position_embeddings as Gemma 3's length unmultiplied (formats/runtimes.py): the target,
    # except for dynamic, where transformers' NTK switches on past it (this test fails with the target there)
    L, N = spec.original_context, spec.target_context
    assert exported["max_position_embeddings"] == (L if method == "dynamic" else N)
    if method == "linear":  # transformers' linear rope reads no length; the original is kept for reading back
        assert exported["original_max_position_embeddings"] == L
    (tmp_path / "config.json").write_text(json.dumps(exported))
    local = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64)
    for seq_len in (spec.original_context // 2, spec.original_context + 1, spec.target_context):
        ropes = gemma3_rope(tmp_path, seq_len)
        np.testing.assert_allclose(ropes["full_attention"][0], spec.inv_freq(seq_len), rtol=1e-6,
                                   err_msg=f"global inv_freq at {seq_len}")
        assert ropes["full_attention"][1] == pytest.approx(spec.attention_factor, rel=1e-6)
        np.testing.assert_allclose(ropes["sliding_attention"][0], local, rtol=1e-6, err_msg=f"sliding at {seq_len}")
        assert ropes["sliding_attention"][1] == 1.0
    if method != "ntk":  # ntk is written as a plain rope with a new base: nothing to read back
        again = spec_from_hf_config(exported)
        np.testing.assert_allclose(again.inv_freq(spec.target_context), spec.inv_freq(spec.target_context), rtol=1e-12)
        assert (again.original_context, again.target_context) == (L, N)
