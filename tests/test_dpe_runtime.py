"""The registered DPE attention against a plain eager reference written here from the formulas
(reference/methods.md §3.2, §4.1), on a tiny Llama whose q/k weights are scaled up so attention is peaked and
positions matter (the controls below prove that a wrong map would be caught).

Reference, per layer and query head h, for a query at position p and a key at position k:
- p − k < W: q and k rotated at p and k (every pair);
- p − k ≥ W: pair i of q rotated at ⌊p/g⌋ + W − W/g and of k at ⌊k/g⌋, g = the scale of i's group if i is selected
  for (layer, h), else 1 (unchanged positions);
- causal softmax over the merged scores, then V. The model's own f32 angle convention (position·inv_freq in f32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.position_map import PositionMap
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config

N, PREFILL = 480, 400  # the tiny model's original context is 256
WINDOW = 48


# ---- the reference ------------------------------------------------------------------------------------------------
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_at(x, pos, inv32):
    """x [..., T, D] rotate-half pairs rotated at float positions pos [..., T, pairs] (f32 angles, as the model)."""
    ang = (pos.float() * inv32).double()
    cos, sin = ang.cos(), ang.sin()
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


def reference_hidden(model, ids: torch.Tensor, pm: PositionMap | None) -> torch.Tensor:
    """Final normed hidden states [T, hidden] of a Llama computed from its weights, with DPE attention given by `pm`
    (None = plain). The logits are these times the (tied) embedding: comparing them is as strict and 800× cheaper."""
    c = model.config
    sd = {k: v.double() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    T, pairs = ids.shape[0], D // 2
    inv32 = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float) / D))
    p = torch.arange(T, dtype=torch.float64)
    table = np.ones((c.num_hidden_layers, H, pairs)) if pm is None else pm.scale_table(c.num_hidden_layers, H)
    W = pm.window if pm is not None else T
    dist = p[:, None] - p[None, :]
    x = sd["model.embed_tokens.weight"][ids]
    for layer in range(c.num_hidden_layers):
        pre = f"model.layers.{layer}."
        h = _rms(x, sd[pre + "input_layernorm.weight"], c.rms_norm_eps)
        q = (h @ sd[pre + "self_attn.q_proj.weight"].T).view(T, H, D)
        k = (h @ sd[pre + "self_attn.k_proj.weight"].T).view(T, Hkv, D)
        v = (h @ sd[pre + "self_attn.v_proj.weight"].T).view(T, Hkv, D)
        heads = []
        for hd in range(H):
            kv = hd // (H // Hkv)
            g = torch.as_tensor(table[layer, hd])  # [pairs]
            exact = p[:, None].expand(T, pairs)
            q_loc, k_loc = _rotate_at(q[:, hd], exact, inv32), _rotate_at(k[:, kv], exact, inv32)
            q_grp = _rotate_at(q[:, hd], torch.floor(p[:, None] / g) + W - W / g, inv32)
            k_grp = _rotate_at(k[:, kv], torch.floor(p[:, None] / g), inv32)
            s = torch.where(dist < W, q_loc @ k_loc.T, q_grp @ k_grp.T) / D ** 0.5
            s = s.masked_fill(dist < 0, float("-inf"))
            heads.append(torch.softmax(s, -1) @ v[:, kv])
        x = x + torch.cat(heads, -1) @ sd[pre + "self_attn.o_proj.weight"].T
        h = _rms(x, sd[pre + "post_attention_layernorm.weight"], c.rms_norm_eps)
        gate, up = h @ sd[pre + "mlp.gate_proj.weight"].T, h @ sd[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[pre + "mlp.down_proj.weight"].T
    return _rms(x, sd["model.norm.weight"], c.rms_norm_eps)


# ---- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peaked_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with q/k weights ×6: with the random init's 0.02 std, attention would be nearly uniform and
    blind to positions."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    out = tmp_path_factory.mktemp("peaked") / "peaked-llama"
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).write_bytes((tiny_llama / f).read_bytes())
    return out


def dpe_map(seed: int = 0) -> PositionMap:
    sel = np.random.default_rng(seed).random((2, 4, 8)) < 0.6  # per (layer, query head): GQA pairs differ too
    return PositionMap.build(window=WINDOW, boundaries=[0, 2, 4, 6, 8], scales=[2.0, 3.0, 1.0, 5.0],
                             original_context=256, selected=sel)


@pytest.fixture(scope="module")
def exports(peaked_llama, tmp_path_factory):
    base = base_rope_from_config(read_config(peaked_llama))
    sel = dpe_map().selected
    specs = {"dpe": build_spec("dpe", base, factor=4.0, window=WINDOW, scales="2,3,1,5", selected=sel),
             "selfextend": build_spec("selfextend", base, factor=4.0, window=WINDOW, group_size=6.0)}
    root = tmp_path_factory.mktemp("dpe-exports")
    return {m: (write_hf_export(peaked_llama, s, root / m, progress=False)[0], s.position_map) for m, s in specs.items()}


@pytest.fixture(scope="module")
def ids(peaked_llama):
    vocab = read_config(peaked_llama)["vocab_size"]  # ids inside the tiny model's own vocabulary
    return torch.randint(3, vocab, (N,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(exports, ids):
    """Reference hidden states per method (the map's weights are the export's: same model)."""
    model = _load(exports["dpe"][0])
    return {m: reference_hidden(model, ids, pm) for m, (_, pm) in exports.items()}


def _load(path):
    import ropeconvert  # noqa: F401  (registers the attention)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()  # config.json names the attention


def _hidden(model, ids, **kw):
    return model.model(ids, **kw).last_hidden_state.double()


# ---- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dpe", "selfextend"])
def test_prefill_matches_reference(method, exports, reference, ids, monkeypatch):
    from ropeconvert.validators import dpe_attention

    model = _load(exports[method][0])
    assert model.config._attn_implementation == "ropeconvert_dpe"
    want = reference[method]
    with torch.inference_mode():
        got = _hidden(model, ids[None])[0]  # CPU: torch's fused flash kernel per part, 512-query chunks
        monkeypatch.setattr(dpe_attention, "CHUNK", 37)  # many uneven chunks, band masks across chunk edges
        chunked = _hidden(model, ids[None])[0]
        monkeypatch.setattr(dpe_attention, "USE_FUSED", False)  # the eager parts CUDA runs
        monkeypatch.setattr(dpe_attention, "SCORE_BUDGET", 4 * 4 * N * 41)
        eager = _hidden(model, ids[None])[0]
    for name, value in (("fused", got), ("chunked", chunked), ("eager", eager)):
        assert (value - want).abs().max() <= 1e-4, (name, (value - want).abs().max())


def test_controls_show_the_reference_is_sensitive(exports, reference, ids):
    """The plain rope, Self-Extend and a different selection are all far from the DPE reference, so the 1e-4
    matches above could not come from a runtime that ignores (part of) the map."""
    model = _load(exports["dpe"][0])
    want = reference["dpe"]
    assert (reference_hidden(model, ids, None) - want).abs().max() > 1e-2
    assert (reference["selfextend"] - want).abs().max() > 1e-2
    assert (reference_hidden(model, ids, dpe_map(seed=7)) - want).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["dpe", "selfextend"])
def test_decoding_with_kv_cache_matches_reference(method, exports, reference, ids):
    from transformers import DynamicCache

    model = _load(exports[method][0])
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        steps = [_hidden(model, ids[None, :PREFILL], past_key_values=cache, use_cache=True)[0, -1]]
        for t in range(PREFILL, N):  # one token at a time against the cache, across the window and the groups
            steps.append(_hidden(model, ids[None, t:t + 1], past_key_values=cache, use_cache=True)[0, -1])
    got = torch.stack(steps)
    assert (got - reference[method][PREFILL - 1:]).abs().max() <= 1e-4


def test_left_padded_batch_matches_reference(exports, reference, ids):
    """Two sequences of different lengths in one batch, left-padded, positions from the mask (as generate does)."""
    path, pm = exports["dpe"]
    model = _load(path)
    short = 350
    batch = torch.stack([ids, torch.cat([torch.zeros(N - short, dtype=ids.dtype), ids[:short]])])
    mask = torch.ones_like(batch)
    mask[1, :N - short] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        got = _hidden(model, batch, attention_mask=mask, position_ids=pos)
    assert (got[0] - reference["dpe"]).abs().max() <= 1e-4
    assert (got[1, N - short:] - reference_hidden(model, ids[:short], pm)).abs().max() <= 1e-4


def test_attach_runs_a_map_on_a_loaded_model_and_detach_restores(peaked_llama, reference, ids):
    from transformers import AutoModelForCausalLM

    from ropeconvert.validators.dpe_attention import attach, detach

    model = AutoModelForCausalLM.from_pretrained(peaked_llama, attn_implementation="sdpa").eval()
    with torch.inference_mode():
        plain = _hidden(model, ids[None])
        attach(model, dpe_map())
        got = _hidden(model, ids[None])[0]
        detach(model)
        again = _hidden(model, ids[None])
    assert (got - reference["dpe"]).abs().max() <= 1e-4
    assert model.config._attn_implementation == "sdpa" and (again - plain).abs().max() <= 1e-5


def test_import_is_light_and_registers_on_transformers_import():
    import subprocess
    import sys

    code = ("import sys, ropeconvert; assert 'torch' not in sys.modules, 'torch imported'; "
            "from transformers import AttentionInterface; "
            "from ropeconvert.formats.dpe_format import ATTN_NAME; "
            "assert ATTN_NAME == ropeconvert.DPE_ATTENTION in AttentionInterface._global_mapping; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_without_the_registration_the_export_refuses_to_load(exports):
    """A DPE export never silently runs the plain rope: unregistered, transformers rejects the attention name."""
    from transformers import AttentionInterface, AutoModelForCausalLM

    from ropeconvert.validators.dpe_register import ATTN_NAME, register

    saved = AttentionInterface._global_mapping.pop(ATTN_NAME)
    try:
        with pytest.raises(ValueError, match=ATTN_NAME):
            AutoModelForCausalLM.from_pretrained(exports["dpe"][0])
    finally:
        AttentionInterface._global_mapping[ATTN_NAME] = saved
    register()
    assert AttentionInterface._global_mapping[ATTN_NAME] is saved
