"""DPE / Self-Extend: the position map's checks, the methods, the HF export (`dpe` block + index map, verified), the
GGUF export (ropeconvert.dpe.* metadata + the rope_freqs approximation, run by llama.cpp) and the CLI's refusals."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.position_map import PositionMap, even_boundaries
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import SpecError
from ropeconvert.formats import dpe_format
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config

from helpers import assert_one_line_error, run_cli

SMOL = BaseRope(head_dim=64, rotary_dim=64, rope_theta=1e5, original_context=8192)


def sel(shape=(2, 4, 8), seed=0):
    return np.random.default_rng(seed).random(shape) < 0.5


# ---- the map --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    (dict(window=256), "window 256 must be smaller than the original context 256"),
    (dict(window=0), "window must be an integer ≥ 1"),
    (dict(scales=[2, 0, 4, 1]), "scales[1] = 0"),
    (dict(scales=[2, -3, 4, 1]), "scales[1] = -3"),
    (dict(scales=[2, 0.5, 4, 1]), "must be a finite number ≥ 1"),
    (dict(scales=[2, 3]), "2 scales for 4 dimension groups"),
    (dict(boundaries=[0, 4, 4, 8]), "must rise strictly"),
    (dict(selected=sel((2, 4, 7))), "selection mask has shape [2, 4, 7], expected [layers, heads, 8]"),
    (dict(selected=sel((2, 8))), "expected [layers, heads, pairs]"),
])
def test_map_refuses_bad_values_naming_field_and_range(kwargs, needle):
    args = dict(window=64, boundaries=[0, 2, 4, 6, 8], scales=[2, 3, 4, 1], original_context=256, selected=sel())
    with pytest.raises(SpecError) as e:
        PositionMap.build(**{**args, **kwargs})
    assert needle in e.value.one_line()


def test_map_round_trips_and_its_scale_table():
    pm = PositionMap.build(window=64, boundaries=[0, 2, 4, 6, 8], scales=[2, 3, 4, 1], original_context=256,
                           selected=sel())
    assert PositionMap.from_dict(json.loads(json.dumps(pm.to_dict()))) == pm
    table = pm.scale_table(2, 4)
    assert np.array_equal(table, np.where(sel(), np.repeat([2.0, 3, 4, 1], 2), 1.0))
    with pytest.raises(SpecError, match="2 layers × 3 attention heads"):
        pm.scale_table(2, 3)
    assert pm.effective_lengths(1024) == [64 + 960 / g for g in (2, 3, 4, 1)]
    assert even_boundaries(32, 4) == (0, 8, 16, 24, 32)
    with pytest.raises(SpecError, match="divide the 32 frequency pairs"):
        even_boundaries(32, 5)


def test_specs_round_trip_through_json():
    for spec in (build_spec("selfextend", SMOL, factor=2.0),
                 build_spec("dpe", SMOL, factor=2.0, scales="2,8,2,8", selected=sel((30, 9, 32)))):
        assert RopeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert np.array_equal(spec.inv_freq(16384), SMOL.inv_freq())  # the native rope is kept


def test_selfextend_defaults_follow_the_rule_of_thumb():
    spec = build_spec("selfextend", SMOL, target_context=16384)
    pm = spec.position_map
    assert (pm.window, pm.scales, pm.selected) == (1024, (8.0,), None)  # 1024 + 15360/8 = 2944 ≤ 8192/2
    assert build_spec("selfextend", SMOL, group_size=4.0, window=1024).target_context == (8192 - 1024) * 4 + 1024
    with pytest.raises(SpecError, match="past the trained length 8192"):
        build_spec("selfextend", SMOL, target_context=65536, group_size=2.0)


def test_dpe_method_inputs():
    spec = build_spec("dpe", SMOL, factor=2.0, scales="2, 8,2,8")
    assert spec.position_map.boundaries == (0, 8, 16, 24, 32) and spec.params["scales"] == "2,8,2,8"
    with pytest.raises(SpecError, match="one scale per dimension group"):
        build_spec("dpe", SMOL, factor=2.0)
    with pytest.raises(SpecError, match="--topk needs the model"):
        build_spec("dpe", SMOL, factor=2.0, scales="2,2", topk=8)
    with pytest.raises(SpecError, match="--window does not apply to method 'yarn'"):
        build_spec("yarn", SMOL, factor=2.0, window=1024)


# ---- HF ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpe_spec(tiny_llama):
    base = base_rope_from_config(read_config(tiny_llama))
    return build_spec("dpe", base, factor=2.0, window=32, scales="2,4,1,8", selected=sel())


def test_hf_export_keeps_the_rope_and_adds_block_and_index_map(tiny_llama, dpe_spec, tmp_path):
    from safetensors.numpy import load_file

    from ropeconvert.formats.manifest import verify_hf

    out, _ = write_hf_export(tiny_llama, dpe_spec, tmp_path / "dpe", progress=False)
    src, cfg = read_config(tiny_llama), read_config(out)
    assert {k: v for k, v in cfg.items() if k not in ("dpe", "attn_implementation")} == src  # rope untouched
    block = cfg["dpe"]
    assert cfg["attn_implementation"] == "ropeconvert_dpe" and block["index_map"] == "dpe_index_map.safetensors"
    assert (block["window"], block["group_boundaries"], block["scales"]) == (32, [0, 2, 4, 6, 8], [2.0, 4.0, 1.0, 8.0])
    data = (out / block["index_map"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == block["index_map_sha256"]
    assert np.array_equal(load_file(out / block["index_map"])["selected"], sel().astype(np.uint8))
    assert dpe_format.read_hf_map(out, cfg) == dpe_spec.position_map
    from ropeconvert.formats.inspect import describe

    info = describe(out)
    assert (info["position_map"], info["scales"], info["target_context"]) == ("dpe", [2.0, 4.0, 1.0, 8.0], 512)
    problems, done = verify_hf(out)
    assert not problems and any("`dpe` block and index map equal" in d for d in done)
    # a changed selection is caught twice: by its sha256 in the manifest and against config.json
    (out / block["index_map"]).write_bytes(dpe_format.index_map_bytes(PositionMap.from_dict(
        {**dpe_spec.position_map.to_dict(), "selected": ["ff"] * 8})))
    problems, _ = verify_hf(out)
    assert any("sha256 differs" in p for p in problems) and any("does not match the sha256" in p for p in problems)


def test_selfextend_export_has_no_index_map(tiny_llama, tmp_path):
    base = base_rope_from_config(read_config(tiny_llama))
    out, _ = write_hf_export(tiny_llama, build_spec("selfextend", base, factor=2.0, window=32), tmp_path / "se",
                             progress=False)
    assert read_config(out)["dpe"]["index_map"] is None and not (out / dpe_format.INDEX_MAP_FILE).exists()


# ---- GGUF -------------------------------------------------------------------------------------------------------
def test_rope_freqs_approximation_rule():
    mask = np.zeros((2, 4, 8), dtype=bool)
    mask[:, :, 0] = True  # everywhere
    mask[:, :2, 3] = True  # in half the slots: kept (≥ 50 %)
    mask[0, 0, 5] = True  # in one slot of eight: dropped
    pm = PositionMap.build(window=32, boundaries=[0, 2, 4, 6, 8], scales=[2, 4, 1, 8], original_context=256,
                           selected=mask)
    assert dpe_format.approx_freq_factors(pm).tolist() == [2, 1, 1, 4, 1, 1, 1, 1]


def test_gguf_carries_the_map_and_llamacpp_runs_exactly_the_labelled_approximation(tiny_llama, dpe_spec, tmp_path):
    from gguf import GGUFReader

    from ropeconvert.formats.gguf import write_gguf_export
    from ropeconvert.formats.gguf_read import field
    from ropeconvert.formats.gguf_rope import spec_from_gguf
    from ropeconvert.validators.llamacpp import gguf_eval
    from ropeconvert.validators.runtime import load, set_rope

    path, notes = write_gguf_export(tiny_llama, dpe_spec, tmp_path / "dpe.gguf", outtype="f32", progress=False)
    assert notes[0].startswith("APPROXIMATION: llama.cpp cannot run dpe exactly")
    reader = GGUFReader(str(path))
    f = np.array(next(t for t in reader.tensors if t.name == "rope_freqs.weight").data)
    assert np.array_equal(f, dpe_format.approx_freq_factors(dpe_spec.position_map))
    assert field(reader, "ropeconvert.dpe.window") == 32
    assert list(field(reader, "ropeconvert.dpe.selected")) == sel().astype(int).ravel().tolist()
    assert spec_from_gguf(reader) == dpe_spec  # the exact map travels with the file
    # llama.cpp = transformers running the same per-pair divisors: the approximation is what the label says
    vocab = read_config(tiny_llama)["vocab_size"]  # ids inside the tiny model's own vocabulary
    ids = list(np.random.default_rng(0).integers(3, vocab, 480))
    ev = gguf_eval(path, ids)
    approx = RopeSpec(method="approx", base=dpe_spec.base, target_context=512, rope_theta=dpe_spec.rope_theta,
                      factors=tuple(float(x) for x in f))
    rt = load(tiny_llama, device="cpu")
    set_rope(rt.model, approx)
    with torch.inference_mode():
        logits = rt.model(torch.tensor([ids])).logits[0, :-1].double()
    hf = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none").numpy()
    assert ev.n_ctx_train == 512 and np.abs(ev.nll - hf).max() < 2e-3


def test_qwen2_gguf_refuses_position_maps(tiny_qwen2, tmp_path):
    proc = run_cli(tiny_qwen2, "-m", "selfextend", "-s", "2", "--window", "32", "--to", "gguf",
                   "--out", tmp_path / "x.gguf", "-q")
    assert_one_line_error(proc, "qwen2 GGUFs cannot carry the selfextend approximation")
    assert list(tmp_path.iterdir()) == []


# ---- the CLI's refusals -------------------------------------------------------------------------------------------
def test_cli_bad_window_and_scale(tiny_llama, tmp_path):
    proc = run_cli(tiny_llama, "-m", "dpe", "-s", "2", "--window", "256", "--scales", "2,2", "--out", tmp_path / "a", "-q")
    assert_one_line_error(proc, "window 256 must be smaller than the original context 256")
    proc = run_cli(tiny_llama, "-m", "dpe", "-s", "2", "--window", "32", "--scales", "2,0", "--out", tmp_path / "b", "-q")
    assert_one_line_error(proc, "scales[1] = 0.0", "≥ 1")
    assert list(tmp_path.iterdir()) == []


def test_cli_map_made_for_another_model(tiny_llama, tmp_path):
    pm = PositionMap.build(window=32, boundaries=[0, 4, 8], scales=[2, 4], original_context=256,
                           selected=sel((3, 4, 8)))  # 3 layers: the tiny model has 2
    path = tmp_path / "dpe_map.json"
    path.write_text(json.dumps({"format": "ropeconvert.dpe_map/1", "target_context": 512, "position_map": pm.to_dict()}))
    proc = run_cli(tiny_llama, "-m", "dpe", "--dpe-map", path, "--out", tmp_path / "x", "-q")
    assert_one_line_error(proc, "selection mask has shape [3, 4, 8] but the model has 2 layers × 4 attention heads")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpe_map.json"]
