"""RopeSpec math and validation, checked against the published numbers in reference/methods.md."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ropeconvert.convert.methods import METHODS, build_spec
from ropeconvert.convert.methods.yarn import correction_range
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import SpecError, UnknownNameError
from ropeconvert.registry import Registry

LLAMA2 = BaseRope(head_dim=128, rotary_dim=128, rope_theta=10000.0, original_context=4096)


@pytest.mark.parametrize("base,betas,expected", [
    (LLAMA2, (32, 1), (20, 46)),
    (BaseRope(128, 128, 10000.0, 8192), (128, 2), (16, 46)),   # Mistral-7B YaRN setting
    (BaseRope(128, 128, 500000.0, 8192), (32, 1), (18, 35)),   # Llama-3-8B
    (BaseRope(96, 96, 10000.0, 4096), (32, 1), (15, 34)),      # Phi-3-mini
])
def test_yarn_ramp_bounds_match_reference_table(base, betas, expected):
    assert correction_range(base, *betas) == expected


def test_yarn_llama2_s16_factors_match_reference():
    spec = build_spec("yarn", LLAMA2, factor=16.0)
    f = np.asarray(spec.factors)
    assert np.all(f[:21] == 1.0) and np.all(f[46:] == 16.0)
    published = [1.037, 1.078, 1.121, 1.169, 1.22, 1.276, 1.338, 1.405, 1.48, 1.564, 1.657, 1.763, 1.882, 2.019,
                 2.178, 2.364, 2.584, 2.849, 3.176, 3.586, 4.119, 4.837, 5.859, 7.429, 10.146]
    np.testing.assert_allclose(f[21:46], published, atol=6e-3)
    assert spec.attention_factor ** 2 == pytest.approx(1.6314, abs=1e-4)


def test_linear_and_ntk_and_dynamic():
    lin = build_spec("linear", LLAMA2, target_context=16384)
    assert lin.scale == 4.0 and set(lin.factors) == {4.0}
    ntk = build_spec("ntk", LLAMA2, factor=4.0)
    assert ntk.rope_theta == pytest.approx(10000 * 4 ** (128 / 126))
    # by construction NTK-aware matches PI exactly on the lowest-frequency pair and keeps the highest
    assert ntk.inv_freq()[-1] == pytest.approx(lin.inv_freq()[-1], rel=1e-12)
    assert ntk.inv_freq()[0] == 1.0
    dyn = build_spec("dynamic", LLAMA2, factor=2.0)
    np.testing.assert_allclose(dyn.inv_freq(4096), LLAMA2.inv_freq())  # unchanged within the original length
    base_8k = 10000 * (2 * 8192 / 4096 - 1) ** (128 / 126)
    np.testing.assert_allclose(dyn.inv_freq(8192), LLAMA2.inv_freq(base_8k))


def test_llama31_rope_freqs():
    spec = build_spec("llama3", BaseRope(128, 128, 500000.0, 8192), factor=8.0)
    f = np.asarray(spec.factors)
    wavelen = 2 * math.pi / spec.base.inv_freq()
    assert np.all(f[wavelen < 8192 / 4] == 1.0) and np.all(f[wavelen > 8192] == 8.0)
    assert np.all(np.diff(f) >= 0)


def test_longrope_attention_and_short_default():
    spec = build_spec("longrope", LLAMA2, factors=list(np.linspace(1, 40, 64)), factor=32.0)
    assert spec.attention_factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    assert spec.short_factors == (1.0,) * 64
    np.testing.assert_allclose(spec.inv_freq(4096), LLAMA2.inv_freq())
    np.testing.assert_allclose(spec.inv_freq(4097), LLAMA2.inv_freq() / np.linspace(1, 40, 64))


@pytest.mark.parametrize("values,needle", [
    ([1.0] * 63, "has 63 values but the model has 64"),
    ([1.0] * 63 + [float("nan")], "factors[63] = nan"),
    ([1.0] * 63 + [-2.0], "factors[63] = -2.0"),
    ([1.0] * 63 + [float("inf")], "factors[63] = inf"),
    ([2.0] + [1.0] * 63, "must be non-decreasing"),
])
def test_bad_factor_arrays(values, needle):
    with pytest.raises(SpecError) as e:
        build_spec("longrope", LLAMA2, factors=values, factor=4.0)
    assert needle in e.value.one_line()


def test_non_monotone_allowed_on_request():
    values = [1.0, 1.1, 1.05] + [2.0] * 61
    assert build_spec("longrope", LLAMA2, factors=values, factor=4.0, allow_non_monotone=True).factors[2] == 1.05


@pytest.mark.parametrize("knobs,needle", [
    ({"factor": 1.0}, "factor must be a finite number > 1"),
    ({"target_context": 4096}, "must be larger than the original context 4096"),
    ({"target_context": 1000}, "must be larger than the original context"),
    ({"factor": 2.0, "target_context": 16384}, "disagree"),
    ({}, "no extension given"),
    ({"factor": float("nan")}, "factor must be a finite number"),
])
def test_bad_scale(knobs, needle):
    with pytest.raises(SpecError) as e:
        build_spec("linear", LLAMA2, **knobs)
    assert needle in e.value.one_line()


def test_knob_not_taken_by_method():
    with pytest.raises(SpecError) as e:
        build_spec("linear", LLAMA2, factor=2.0, beta_fast=64.0)
    assert "--beta-fast does not apply to method 'linear'" in e.value.one_line()


def test_yarn_bad_betas_and_mscale():
    with pytest.raises(SpecError, match="beta_slow < beta_fast"):
        build_spec("yarn", LLAMA2, factor=2.0, beta_fast=1.0, beta_slow=32.0)
    with pytest.raises(SpecError, match="go together"):
        build_spec("yarn", LLAMA2, factor=2.0, mscale=1.0)


def test_spec_round_trips_through_dict():
    spec = build_spec("yarn", LLAMA2, factor=8.0, beta_fast=64.0)
    again = RopeSpec.from_dict(spec.to_dict())
    assert again == spec and dict(again.params) == dict(spec.params)


def test_registry_rejects_duplicates_and_suggests():
    reg = Registry("thing")
    reg.register("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)
    with pytest.raises(UnknownNameError) as e:
        reg.get("alpah")
    assert "did you mean 'alpha'" in e.value.one_line()
    reg.freeze()
    with pytest.raises(RuntimeError):
        reg.register("beta", 3)
    assert {"linear", "ntk", "dynamic", "yarn", "longrope", "llama3"} <= set(METHODS)


def test_every_method_declares_a_kind_its_specs_carry():
    from ropeconvert.convert.spec import KINDS, POSITION_MAP

    for name, info in METHODS.items():
        assert info.kind in KINDS, name
        assert info.hf is None or info.kind != POSITION_MAP
    assert [build_spec(m, LLAMA2, factor=4.0).kind for m in ("linear", "ntk", "dynamic", "yarn", "llama3")] == \
        ["linear", "theta", "dynamic", "yarn", "llama3"]
    spec = build_spec("longrope", LLAMA2, factors=[2.0] * 64, factor=4.0)
    assert spec.kind == "longrope" and spec.to_dict()["kind"] == "longrope"


def test_specs_written_before_kinds_read_back_with_their_kind():
    old = build_spec("yarn", LLAMA2, factor=4.0).to_dict()
    del old["kind"]
    assert RopeSpec.from_dict(old).kind == "yarn"
    made_up = RopeSpec(method="unknown", base=LLAMA2, target_context=8192, rope_theta=1e4, factors=(2.0,) * 64)
    assert made_up.kind == "per_pair"  # a method this install does not know: classified by its fields


@pytest.mark.parametrize("kind,fields,needle", [
    ("linear", {"factors": tuple(np.linspace(1, 2, 64))}, "a linear rope divides every pair by the same factor"),
    ("theta", {"factors": (2.0,) * 64}, "a theta rope has no factors"),
    ("yarn", {}, "a yarn rope needs factors"),
    ("position_map", {}, "a position_map rope needs position_map"),
    ("sideways", {}, "rope kind 'sideways' is not one of theta, linear"),
])
def test_spec_refuses_a_kind_its_fields_contradict(kind, fields, needle):
    with pytest.raises(SpecError) as e:
        RopeSpec(method="x", base=LLAMA2, target_context=8192, rope_theta=1e4, kind=kind, **fields)
    assert needle in e.value.one_line()


def test_knobs_come_from_the_signature():
    knobs = {k.name: k for k in METHODS.get("yarn").knobs}
    assert (knobs["beta_fast"].annotation, knobs["beta_fast"].cli_type, knobs["beta_fast"].default) == ("float", float, 32.0)
    assert (knobs["mscale"].cli_type, knobs["mscale"].default, knobs["mscale"].flag) == (float, None, "--mscale")
    lr = {k.name: k for k in METHODS.get("longrope").knobs}
    assert lr["factors"].cli_type is Path and lr["allow_non_monotone"].cli_type is bool
    dpe = {k.name: k for k in METHODS.get("dpe").knobs}
    assert dpe["scales"].cli_type is str and dpe["dpe_map"].cli_type is Path and dpe["selected"].cli_type is None
    assert METHODS.get("linear").params == ["factor", "target_context"]


def test_registry_unregisters():
    reg = Registry("thing")
    reg.register("alpha", 1)
    assert reg.unregister("alpha") == 1 and "alpha" not in reg
    with pytest.raises(UnknownNameError):
        reg.unregister("alpha")
