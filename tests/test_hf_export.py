"""HF export mechanics on tiny random models: byte-identical weights, portable config, atomic output."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config, spec_from_hf_config
from ropeconvert.formats.source import read_config

from helpers import run_cli, sha256


def test_export_single_file_byte_identical_and_loads(tiny_llama, tmp_path):
    out = tmp_path / "yarn"
    proc = run_cli(tiny_llama, "--method", "yarn", "--factor", "4", "--to", "hf", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert sha256(out / "model.safetensors") == sha256(tiny_llama / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "ropeconvert.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    rope = config["rope_scaling"]
    assert rope["rope_type"] == rope["type"] == "yarn" and isinstance(rope["factor"], float)
    assert config["rope_theta"] == rope["rope_theta"] == 10000.0
    assert config["max_position_embeddings"] == 1024 and rope["original_max_position_embeddings"] == 256
    assert config["original_max_position_embeddings"] == 256
    # stock transformers loads it and its rotary embedding uses exactly the spec's frequencies
    model = AutoModelForCausalLM.from_pretrained(out)
    spec = spec_from_hf_config(config)
    np.testing.assert_allclose(model.model.rotary_emb.inv_freq.double().numpy(), spec.inv_freq(), rtol=1e-6)
    assert model.model.rotary_emb.attention_scaling == pytest.approx(0.1 * np.log(4) + 1)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("It is a truth universally acknowledged", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_sharded_export_keeps_index_and_shards(tiny_llama_sharded, tmp_path):
    src = tiny_llama_sharded
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) > 1
    out = tmp_path / "lin"
    assert run_cli(src, "-m", "linear", "-s", "2", "-o", out, "-q").returncode == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    for name in shards + ["model.safetensors.index.json"]:
        assert sha256(out / name) == sha256(src / name)
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 256  # linear keeps the original (vLLM/SGLang multiply by factor)
    AutoModelForCausalLM.from_pretrained(out)


def test_link_option_hard_links(tiny_llama, tmp_path):
    out = tmp_path / "linked"
    assert run_cli(tiny_llama, "-m", "ntk", "-s", "2", "-o", out, "--link", "-q").returncode == 0
    assert os.stat(out / "model.safetensors").st_ino == os.stat(tiny_llama / "model.safetensors").st_ino
    assert json.loads((out / "ropeconvert.json").read_text())["linked_weights"] is True


def test_force_replaces_and_leaves_no_temporaries(tiny_llama, tmp_path):
    out = tmp_path / "x"
    assert run_cli(tiny_llama, "-m", "linear", "-s", "2", "-o", out, "-q").returncode == 0
    assert run_cli(tiny_llama, "-m", "yarn", "-s", "2", "-o", out, "-q").returncode == 2
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["rope_type"] == "linear"
    assert run_cli(tiny_llama, "-m", "yarn", "-s", "2", "-o", out, "-q", "--force").returncode == 0
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["rope_type"] == "yarn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_writer_api_and_tokenizer_length(tiny_llama, tmp_path):
    config = read_config(tiny_llama)
    spec = build_spec("llama3", base_rope_from_config(config), factor=8.0)
    cfg = json.loads((tiny_llama / "tokenizer_config.json").read_text())
    path, notes = write_hf_export(tiny_llama, spec, tmp_path / "l3", progress=False)
    assert path == tmp_path / "l3" and notes == []
    saved = json.loads((path / "ropeconvert.json").read_text())
    assert saved["spec"]["method"] == "llama3" and saved["spec"]["target_context"] == 2048
    assert json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length") == cfg.get("model_max_length")


CONFIG = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4, "rope_theta": 1e4,
          "max_position_embeddings": 4096}


@pytest.mark.parametrize("rope,message", [
    ({"rope_type": "sideways", "factor": 2.0},
     "config.json: rope type 'sideways' is not supported — supported: default, linear, dynamic, yarn, longrope, llama3"),
    ({"rope_type": "llama3", "factor": 2.0},
     "config.json: rope_scaling of type 'llama3' lacks 'low_freq_factor' — give the complete rope_scaling the model "
     "was published with"),
    ({"rope_type": "linear"}, "config.json: rope_scaling of type 'linear' lacks 'factor'"),
])
def test_reading_back_refuses_unknown_types_and_missing_keys(rope, message):
    from ropeconvert.errors import RopeConvertError

    with pytest.raises(RopeConvertError) as e:
        spec_from_hf_config({**CONFIG, "rope_scaling": rope})
    assert e.value.one_line().startswith(message)


def test_phi3_su_alias_reads_as_longrope():
    config = {**CONFIG, "max_position_embeddings": 16384, "original_max_position_embeddings": 4096,
              "rope_scaling": {"type": "su", "long_factor": [2.0] * 32, "short_factor": [1.0] * 32}}
    spec = spec_from_hf_config(config)
    assert (spec.method, spec.kind, spec.target_context) == ("longrope", "longrope", 16384)
    assert spec.attention_factor == pytest.approx(np.sqrt(1 + np.log(4) / np.log(4096)))


def test_a_method_with_its_own_rope_type_is_written_and_read_through_the_table():
    """Both directions come from the method's HfRope: a method registered here is exported under its own rope_type
    and read back into itself, and the refusal for unknown types lists it."""
    from ropeconvert.convert.methods import METHODS, rope_method
    from ropeconvert.convert.methods._registry import HfRope, need
    from ropeconvert.convert.spec import LINEAR, RopeSpec, resolve_target
    from ropeconvert.errors import UnsupportedError
    from ropeconvert.formats.hf_config import hf_config_for

    def halve(base, *, factor: float | None = None) -> RopeSpec:
        s, target = resolve_target(base, factor, None)
        return RopeSpec(method="halve-test", base=base, target_context=target, rope_theta=base.rope_theta,
                        factors=(s,) * base.n_pairs, params={"factor": s})

    hf = HfRope("halve_test", write=lambda spec: {"factor": float(spec.params["factor"])},
                read=lambda rope, config, base: {"factor": need(rope, "factor")})
    rope_method("halve-test", paper="https://example.org", summary="test", kind=LINEAR, hf=hf)(halve)
    try:
        spec = build_spec("halve-test", base_rope_from_config(CONFIG), factor=2.0)
        written = hf_config_for(spec, CONFIG)
        assert written["rope_scaling"] == {"rope_type": "halve_test", "factor": 2.0, "type": "halve_test",
                                           "rope_theta": 1e4}
        assert written["max_position_embeddings"] == 4096  # the linear kind keeps the original (envelope policy)
        again = spec_from_hf_config(written)
        assert again == spec and again.method == "halve-test"
        with pytest.raises(UnsupportedError) as e:
            spec_from_hf_config({**CONFIG, "rope_scaling": {"rope_type": "sideways", "factor": 2.0}})
        assert e.value.one_line().endswith("supported: default, linear, dynamic, yarn, longrope, llama3, halve_test")
    finally:
        METHODS.unregister("halve-test")
