"""DPE's key-dimension selection and effective-length detection on a tiny model: the selection against q/k taken
from the projections by hand (GQA mapped from the config), and the sweep's bookkeeping — every evaluation logged,
the start being the best uniform map, each group moving only to a logged improvement, resume without new forwards,
the budget refused before any load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ropeconvert.convert.search.dpe import search
from ropeconvert.convert.search.dpe_select import pair_scores, top_k
from ropeconvert.convert.search.options import SearchOptions
from ropeconvert.errors import SpecError


def test_pair_scores_match_pre_rope_projections(tiny_llama):
    """Mean over tokens of ‖q_i‖·‖k_i‖ from q_proj/k_proj outputs (before the rope), query head h ↔ kv head h // 2."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    samples = [list(range(5, 105)), list(range(300, 360))]
    got = pair_scores(model, samples)
    assert model.config._attn_implementation == "sdpa"  # restored
    captured = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(lambda m, i, o, l=n: captured.setdefault(("q", l), []).append(o))
             for n, layer in enumerate(model.model.layers)]
    hooks += [layer.self_attn.k_proj.register_forward_hook(lambda m, i, o, l=n: captured.setdefault(("k", l), []).append(o))
              for n, layer in enumerate(model.model.layers)]
    with torch.inference_mode():
        for ids in samples:
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    want = np.zeros_like(got)
    for layer in range(2):
        q = torch.cat([o[0] for o in captured[("q", layer)]]).view(-1, 4, 16)
        k = torch.cat([o[0] for o in captured[("k", layer)]]).view(-1, 2, 16)
        qn = (q[..., :8] ** 2 + q[..., 8:] ** 2).sqrt()
        kn = (k[..., :8] ** 2 + k[..., 8:] ** 2).sqrt()[:, [0, 0, 1, 1]]
        want[layer] = (qn * kn).mean(0).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    mask = top_k(got, 3)
    assert mask.sum(-1).tolist() == [[3] * 4] * 2
    assert np.all(np.sort(got, -1)[..., -3][..., None] <= np.where(mask, got, np.inf))
    with pytest.raises(SpecError, match=r"--topk must be an integer in \[1, 8\]"):
        top_k(got, 9)


def test_detection_sweep_log_choice_and_resume(tiny_llama_49k, tmp_path):
    # needle prompts are real words: the model with SmolLM2's tokenizer (the scores decide which maps the pass tries)
    opts = SearchOptions(str(tiny_llama_49k), method="dpe", target_context=512, window=32, groups=2, topk=6,
                         lengths=(512, 256, 128), samples=1, out=tmp_path / "s", progress=False)
    first = search(opts)
    log = json.loads(first.log.read_text())
    assert log["settings"]["candidates"] == [1.0, 2.0, 4.0] and log["settings"]["fixed_scale"] is None
    assert first.evaluations == first.new_evaluations == 7  # 3 uniform maps + 2 groups × the 2 other candidates
    by = {tuple(e["scales"]): e for e in log["evaluations"]}
    key = lambda s: (-by[s]["retrieved"], by[s]["nll"])  # noqa: E731
    current = list(min(((g, g) for g in (1.0, 2.0, 4.0)), key=lambda s: (key(s), s[0])))  # best uniform map
    for k in range(2):  # each group moves only to a candidate that beats the current map, others held
        tried = [tuple(c if j == k else current[j] for j in range(2)) for c in (1.0, 2.0, 4.0)]
        best = min(tried, key=lambda s: (key(s), s[k] != current[k], s[k]))
        assert key(best) <= key(tuple(current))
        current = list(best)
    assert first.scales == current and log["result"]["scales"] == current
    assert (first.retrieved, first.nll) == (by[tuple(current)]["retrieved"], by[tuple(current)]["nll"])  # scored whole
    written = json.loads(first.map.read_text())
    assert written["format"] == "ropeconvert.dpe_map/1" and written["position_map"]["scales"] == first.scales
    assert np.array(written["position_map"]["shape"]).tolist() == [2, 4, 8] and first.plot.is_file()
    again = search(SearchOptions(**{**opts.__dict__, "resume": True}))
    assert again.new_evaluations == 0 and again.scales == first.scales
    with pytest.raises(Exception, match="already holds a DPE search"):
        search(opts)
    fixed = search(SearchOptions(**{**opts.__dict__, "out": tmp_path / "f", "fixed_scale": 3.0}))
    assert fixed.evaluations == 1 + 2 * 3  # the all-3 map, then every candidate per group (3 is not one)
    assert json.loads(fixed.log.read_text())["evaluations"][0]["scales"] == [3.0, 3.0]


def test_detection_refusals_before_loading(tiny_llama, tmp_path):
    base = dict(model=str(tiny_llama), method="dpe", target_context=512, window=32, groups=2, out=tmp_path / "s", progress=False)
    with pytest.raises(SpecError, match="needs 7 evaluations"):
        search(SearchOptions(**base, lengths=(512, 256, 128), budget=6))
    with pytest.raises(SpecError, match=r"not an effective length in \[32, 512\]"):
        search(SearchOptions(**base, lengths=(1024,)))
    with pytest.raises(SpecError, match="divide the 8 frequency pairs"):
        search(SearchOptions(**{**base, "groups": 3}))
    assert not (tmp_path / "s").exists()
