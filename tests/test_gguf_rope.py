"""GGUF rope mapping: every method and arch written to a real file, read back with GGUFReader, and checked against the
spec through an independent model of what llama.cpp computes from those keys (no llama.cpp needed here; the
runtime itself is exercised in test_gguf_llamacpp.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.spec import BaseRope
from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.gguf import plan_tensors, write_gguf_export
from ropeconvert.formats.gguf_read import dequantized_tensors, hf_config_from_gguf, unpermute
from ropeconvert.formats.gguf_rope import FREQS, LONG, SHORT, GgufRope, add_rope, gguf_rope, read_rope, spec_from_gguf
from ropeconvert.formats.gguf_stream import permute_qk
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config
from ropeconvert.formats.tensors import index_weights, read_tensor

from conftest import make_tiny_model

LONG_F = [1.0, 1.5, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]
SHORT_F = [1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
CASES = {  # name → (method, knobs, static)
    "linear": ("linear", {"factor": 4.0}, False),
    "ntk": ("ntk", {"factor": 4.0}, False),
    "yarn": ("yarn", {"factor": 4.0}, False),
    "yarn-attn": ("yarn", {"factor": 4.0, "attention_factor": 1.3}, False),
    "yarn-betas": ("yarn", {"factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0}, False),
    "llama3": ("llama3", {"factor": 4.0}, False),
    "longrope": ("longrope", {"factors": LONG_F, "short_factors": SHORT_F, "factor": 4.0}, False),
    "dynamic-static": ("dynamic", {"factor": 2.0}, True),
}
QWEN_OK = ("linear", "ntk", "yarn", "yarn-attn", "dynamic-static")


def llamacpp_rope(rope: GgufRope, arch: str, n_ctx: int) -> tuple[np.ndarray, float]:
    """(frequencies, cos/sin magnitude) llama.cpp derives from the keys, following llama-context.cpp, llama-model.cpp
    get_rope_factors and ggml-cpu rope_yarn with the default parameters (ecosystem.md §2.4)."""
    d = rope.dimension_count
    kind = rope.scaling_type
    freq_scale = 1.0 if kind == "none" or not rope.scaling_factor else 1.0 / rope.scaling_factor
    ext = 1.0 if kind == "yarn" else 0.0
    loads_long_short = arch == "phi3" or (arch == "llama" and kind == "longrope")
    ff = np.ones(d // 2)
    if arch == "llama" and not loads_long_short and FREQS in rope.tensors:
        ff = rope.tensors[FREQS].astype(np.float64)
    elif loads_long_short and LONG in rope.tensors:
        ff = rope.tensors[LONG if n_ctx > rope.original_context else SHORT].astype(np.float64)
    i = np.arange(d // 2)
    extrap = rope.freq_base ** (-2 * i / d) / ff
    interp = freq_scale * extrap
    theta = interp
    mag = rope.attn_factor if rope.attn_factor is not None else 1.0
    if ext:
        def corr(r):
            return d * math.log(rope.original_context / (r * 2 * math.pi)) / (2 * math.log(rope.freq_base))
        low, high = max(0, math.floor(corr(32.0))), min(d - 1, math.ceil(corr(1.0)))
        ramp = (1 - np.clip((i - low) / max(0.001, high - low), 0, 1)) * ext
        theta = interp * (1 - ramp) + extrap * ramp
        mag *= 1.0 + 0.1 * math.log(1.0 / freq_scale)  # context setup cancels its own mscale; ggml applies it
    return theta, mag


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory, smollm2_hf):
    out = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-phi3", smollm2_hf, model_type="phi3")
    config = json.loads((out / "config.json").read_text())
    config["original_max_position_embeddings"] = 256  # Phi3Config defaults it to 4096
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def models(tiny_llama, tiny_qwen2, tiny_phi3):
    return {"llama": tiny_llama, "qwen2": tiny_qwen2, "phi3": tiny_phi3}


def rope_only_gguf(spec, arch: str, static: bool, path) -> GGUFReader:
    """A GGUF holding just what formats/gguf_rope.py writes (the full exporter adds weights and tokenizer around it)."""
    rope = gguf_rope(spec, arch, static)
    writer = GGUFWriter(str(path), arch)
    add_rope(writer, rope, spec)
    for name, arr in rope.tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFReader(path)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_every_method_round_trips_through_a_file(arch, tmp_path):
    base = BaseRope(head_dim=16, rotary_dim=16, rope_theta=10000.0, original_context=256, arch=arch)
    for case, (method, knobs, static) in CASES.items():
        spec = build_spec(method, base, **knobs)
        if arch == "qwen2" and case not in QWEN_OK:
            with pytest.raises(UnsupportedError) as refused:
                gguf_rope(spec, arch, static)
            assert "qwen2 GGUFs cannot express" in refused.value.one_line()
            assert "qwen2 takes: linear, ntk, yarn" in refused.value.one_line()
            continue
        reader = rope_only_gguf(spec, arch, static, tmp_path / f"{case}.gguf")
        rope = read_rope(reader)
        assert rope.context_length == spec.target_context and rope.original_context == 256, case
        assert rope.dimension_count == 16
        assert spec_from_gguf(reader) == spec
        lengths = (spec.target_context, 200) if method == "longrope" else (spec.target_context,)
        for n_ctx in lengths:
            theta, mag = llamacpp_rope(rope, arch, n_ctx)
            np.testing.assert_allclose(theta, spec.inv_freq(n_ctx), rtol=2e-6, err_msg=f"{arch} {case} @ {n_ctx}")
            assert mag == pytest.approx(spec.attention_factor, rel=1e-6), (arch, case)
        expected_tensors = {"llama3": {FREQS}, "yarn-betas": {FREQS}, "longrope": {LONG, SHORT}}.get(case, set())
        if arch == "phi3" and expected_tensors == {FREQS}:
            expected_tensors = {LONG, SHORT}  # phi3 loads no rope_freqs: equal long and short factors instead
        assert set(rope.tensors) == expected_tensors, (arch, case)
        if case == "yarn-attn":  # llama.cpp multiplies its own 0.1·ln s + 1 by rope.scaling.attn_factor
            assert rope.attn_factor == pytest.approx(1.3 / (1 + 0.1 * math.log(4)), rel=1e-6)


@pytest.mark.parametrize("arch,case", [("llama", "longrope"), ("qwen2", "yarn-attn"), ("phi3", "llama3")])
def test_full_export_carries_the_rope(arch, case, models, tmp_path):
    method, knobs, static = CASES[case]
    spec = build_spec(method, base_rope_from_config(read_config(models[arch])), **knobs)
    path, _ = write_gguf_export(models[arch], spec, tmp_path / "m.gguf", outtype="f16", static=static, progress=False)
    reader = GGUFReader(path)
    expected = rope_only_gguf(spec, arch, static, tmp_path / "r.gguf")
    got, want = read_rope(reader), read_rope(expected)
    assert {k: v for k, v in vars(got).items() if k != "tensors"} == {k: v for k, v in vars(want).items() if k != "tensors"}
    assert set(got.tensors) == set(want.tensors) and all(np.array_equal(got.tensors[k], want.tensors[k]) for k in got.tensors)
    assert spec_from_gguf(reader) == spec


def test_dynamic_needs_static(tiny_llama):
    spec = build_spec("dynamic", base_rope_from_config(read_config(tiny_llama)), factor=2.0)
    with pytest.raises(UnsupportedError) as refused:
        gguf_rope(spec, "llama")
    assert "no dynamic NTK" in refused.value.one_line() and "--static" in refused.value.one_line()


def test_permute_is_the_inverse_of_unpermute():
    w = np.random.default_rng(0).standard_normal((48, 8)).astype(np.float32)
    for heads in (1, 2, 3):
        p = permute_qk(w, heads)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute(p, heads), w)


@pytest.mark.parametrize("outtype,qtype", [("f32", GGMLQuantizationType.F32), ("bf16", GGMLQuantizationType.BF16),
                                           ("q8_0", GGMLQuantizationType.Q8_0)])
def test_weights_survive_export_and_dequantize(outtype, qtype, tiny_llama, tmp_path):
    """Names, Q/K permutation and types: the GGUF read back through the GGUF→HF path gives the source weights."""
    spec = build_spec("yarn", base_rope_from_config(read_config(tiny_llama)), factor=2.0)
    path, _ = write_gguf_export(tiny_llama, spec, tmp_path / "w.gguf", outtype=outtype, progress=False)
    reader = GGUFReader(path)
    for t in reader.tensors:
        want = GGMLQuantizationType.F32 if len(t.shape) == 1 else qtype
        assert t.tensor_type == want, t.name
    source = {name: np.asarray(read_tensor(info), np.float32) for name, info in index_weights(tiny_llama).tensors.items()}
    back = dict(dequantized_tensors(reader, hf_config_from_gguf(reader)))
    assert set(back) == set(source)
    for name, arr in source.items():
        if outtype == "bf16":  # 8 significant bits, rounded to nearest
            np.testing.assert_allclose(back[name], arr, rtol=2.0**-8, atol=0, err_msg=name)
        else:  # f32 exact; q8_0 within half a step of each 32-value block's scale
            np.testing.assert_allclose(back[name], arr, atol=0 if outtype == "f32" else 2e-3, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def tiny_llama_bf16(tiny_llama, tmp_path_factory):
    """tiny_llama with every weight stored as bfloat16, as most Hub checkpoints are."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    src = tmp_path_factory.mktemp("bf16") / "bf16-llama"
    shutil.copytree(tiny_llama, src)
    for f in src.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
    return src


def test_bf16_source_to_bf16_keeps_the_stored_bits(tiny_llama_bf16, tmp_path):
    """Same dtype takes the byte path (no float round trip): every weight comes back bit for bit, Q/K un-permuted,
    and the bytes are what gguf's own bf16 quantizer would have written."""
    from gguf import quants

    src = tiny_llama_bf16
    spec = build_spec("linear", base_rope_from_config(read_config(src)), factor=2.0)
    path, _ = write_gguf_export(src, spec, tmp_path / "b.gguf", outtype="bf16", progress=False)
    reader = GGUFReader(path)
    source = {name: np.asarray(read_tensor(info), np.float32) for name, info in index_weights(src).tensors.items()}
    back = dict(dequantized_tensors(reader, hf_config_from_gguf(reader)))
    for name, arr in source.items():
        np.testing.assert_array_equal(back[name], arr, err_msg=name)
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    heads = read_config(src)["num_attention_heads"]
    want = quants.quantize(permute_qk(source["model.layers.0.self_attn.q_proj.weight"], heads),
                           GGMLQuantizationType.BF16)
    assert q.tensor_type == GGMLQuantizationType.BF16 and bytes(q.data) == want.tobytes()


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_row_blocks_write_what_whole_tensor_conversion_writes(outtype, tiny_llama_bf16, tmp_path, monkeypatch):
    """The streamed writer converts row blocks on two threads; with blocks far smaller than the tensors (Q/K blocks
    of two heads, the embedding in 1536 blocks) every tensor's bytes still equal gguf's own conversion of the whole
    permuted tensor, and the sealed sha256 (computed while writing) equals one computed from the file."""
    from gguf import quants

    from ropeconvert.formats import gguf_stream
    from ropeconvert.formats.gguf_integrity import verify_gguf

    monkeypatch.setattr(gguf_stream, "BLOCK_BYTES", 4096)
    src = tiny_llama_bf16
    config = read_config(src)
    spec = build_spec("yarn", base_rope_from_config(config), factor=2.0)
    path, _ = write_gguf_export(src, spec, tmp_path / "blocks.gguf", outtype=outtype, progress=False)
    problems, _ = verify_gguf(path)
    assert problems == []
    by_name = {t.name: t for t in GGUFReader(path).tensors}
    qtype = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16,
             "q8_0": GGMLQuantizationType.Q8_0}[outtype]
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    plans = plan_tensors(src, config, "llama", outtype)  # only for the HF → GGUF names
    assert len(plans) == len(by_name) - len(gguf_rope(spec, "llama").tensors)
    for plan in plans:
        w = np.asarray(read_tensor(plan.source), np.float32)
        kind = plan.hf_name.split(".")[-2]
        if kind in heads:
            w = permute_qk(w, heads[kind])
        want = quants.quantize(w, GGMLQuantizationType.F32 if w.ndim == 1 else qtype)
        assert bytes(by_name[plan.gguf_name].data) == want.tobytes(), plan.hf_name


def test_q8_0_is_bit_exact_with_gguf():
    """Our faster Q8_0 against gguf's reference on the hard cases: all-zero blocks, exact .5 ties after scaling,
    negative extremes, tiny and huge magnitudes; and from bfloat16 bits, on every non-NaN bfloat16 value."""
    from gguf import quants

    from ropeconvert.formats.gguf_stream import q8_0, q8_0_bf16

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 256)).astype(np.float32) * 0.02
    x[0, :32] = 0
    x[1, :32] = np.arange(32) - 15.5  # scale 16.5/127: many values land near .5 steps
    x[2, :32] = np.linspace(-127, 127, 32) / 2  # exact halves after scaling by 127/63.5
    x[3, :] = -1e-30
    x[4, :] = 3e38
    x[5, :32] = 127 * np.float32(0.5) ** np.arange(32)  # v from 127 down to ~0: many crossings of .5 steps
    x[6, :32] = np.nextafter(np.float32(0.5), np.float32(0)) * np.linspace(-1, 1, 32) * 254  # just below ties
    x[7, :32] = np.array([np.float32(k) + np.float32(0.5) for k in range(-16, 16)])  # exact ties
    x[7, 0] = 127.0
    for rows in (x, x[:1, :32]):
        with np.errstate(over="ignore"):  # row 4's scale overflows float16 to inf, in both
            assert q8_0(rows).tobytes() == quants.quantize(rows, GGMLQuantizationType.Q8_0).tobytes()
    # bfloat16 input (maxima on the bits): x cut to bfloat16, and every non-NaN bfloat16 value in shuffled blocks
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    every = every[(every & 0x7FFF) <= 0x7F80]
    every = np.concatenate([every, every[:32 - every.size % 32]])
    for bits in ((x.view(np.uint32) >> 16).astype(np.uint16), rng.permutation(every).reshape(-1, 32)):
        widened = (bits.astype(np.uint32) << 16).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # ±inf in a block: NaN values, in both
            assert q8_0_bf16(bits).tobytes() == quants.quantize(widened, GGMLQuantizationType.Q8_0).tobytes()
    # the rounding itself, on every float32 of a dense band just below and at the .5 ties of each step
    from gguf.quants import np_roundf

    from ropeconvert.formats.gguf_stream import JUST_BELOW_HALF
    ties = np.arange(-127, 128, dtype=np.float32) + np.float32(0.5)
    bits = ties.view(np.int32)[:, None] + np.arange(-64, 65, dtype=np.int32)[None, :]
    v = bits.view(np.float32).ravel()
    v = v[np.abs(v) <= 127]
    assert np.array_equal((v + np.copysign(JUST_BELOW_HALF, v)).astype(np.int8), np_roundf(v).astype(np.int8))


def test_bf16_to_f16_is_bit_exact_for_every_bf16_value():
    """All 65536 bfloat16 bit patterns (zeros, subnormals, values that overflow float16, inf, NaN) against numpy's
    float32 → float16 cast, which the GGUF exporter used before."""
    from ropeconvert.formats.gguf_stream import bf16_to_f16

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    with np.errstate(over="ignore"):
        want = np.left_shift(bits, 16, dtype=np.uint32).view(np.float32).astype(np.float16)
    assert np.array_equal(bf16_to_f16(bits.copy()).view(np.uint16), want.view(np.uint16))
