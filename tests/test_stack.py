"""`--stack` (issue #21 item 2): a model that already carries scaling, extended again on top of it. Oracle: the
source's own frequencies as transformers computes them from its config, divided by YaRN's divisors computed here
from the paper's formulas for a model trained at the existing target; the export's frequencies as transformers and
llama.cpp read them must equal that. Refusals: one line naming the pair, exit 2, nothing written."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from conftest import make_tiny_model
from helpers import assert_clean_refusal, run_cli
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.pipeline import convert

ORIGINAL = 256  # the tiny models' "8192" (Llama-3.1) and "32768" (Qwen2.5)
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": ORIGINAL}
QWEN25 = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}


@pytest.fixture(scope="module")
def llama31(tmp_path_factory, small_tokenizer):
    """Llama-3.1-style: llama3 ×8 on 256 tokens, max_position_embeddings 16 × 256 (Llama-3.1: 131072 = 16 × 8192)."""
    return make_tiny_model(tmp_path_factory.mktemp("stack") / "llama31", small_tokenizer,
                           original_context=16 * ORIGINAL, rope_theta=500000.0, rope_scaling=dict(LLAMA31))


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory, small_tokenizer):
    """Qwen2.5-style: YaRN ×4 added to the config, max_position_embeddings left at the original length."""
    return make_tiny_model(tmp_path_factory.mktemp("stack") / "qwen25", small_tokenizer, model_type="qwen2",
                           original_context=ORIGINAL, rope_theta=1000000.0, rope_scaling=dict(QWEN25))


def transformers_rope(model_dir, seq_len: int) -> tuple[np.ndarray, float]:
    """inv_freq and attention scaling of the model's own rotary embedding after a forward of `seq_len` positions."""
    import importlib

    config = AutoConfig.from_pretrained(model_dir)
    modeling = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    rotary = getattr(modeling, f"{config.model_type.capitalize()}RotaryEmbedding")(config=config)
    rotary(torch.zeros(1, seq_len, 8), torch.arange(seq_len)[None])  # longrope picks its set in forward
    return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling)


def yarn_divisors(d: int, theta: float, L: int, s: float, beta_fast: float = 32.0, beta_slow: float = 1.0):
    """YaRN (arXiv 2309.00071 §3.2, the reference code's index ramp): θ_i/θ'_i for a model trained at L."""
    dim = lambda rotations: d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(theta))  # noqa: E731
    low, high = max(math.floor(dim(beta_fast)), 0), min(math.ceil(dim(beta_slow)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / max(high - low, 0.001), 0, 1)  # 0: keep θ_i, 1: θ_i / s
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    return inv / (inv * (1 - ramp) + inv / s * ramp), 0.1 * math.log(s) + 1.0


def plain_inv(d: int, theta: float) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)


def stack(model, out, method="yarn", to="hf", **knobs):
    return convert(ConvertOptions(str(model), method, out=out, to=to, knobs=knobs or {"factor": 2.0}, stack=True,
                                  progress=False))


def test_llama31_stacked_with_yarn_x2(llama31, tmp_path):
    from gguf import GGUFReader

    from ropeconvert.formats.gguf_rope import FREQS, spec_from_gguf
    from ropeconvert.formats.inspect import verify

    out = tmp_path / "llama31-yarn"
    result = stack(llama31, out, to="both")
    d, theta, existing_target = 16, 500000.0, 16 * ORIGINAL  # the longer of max_position_embeddings and 256 × 8
    src_inv, src_attn = transformers_rope(llama31, 64)
    div, mscale = yarn_divisors(d, theta, existing_target, 2.0)
    assert src_attn == 1.0 and div.min() == 1.0 and div.max() == pytest.approx(2.0)  # the ramp is non-trivial
    expected, target = src_inv / div, 2 * existing_target
    assert result.spec.target_context == target and result.spec.original_context == ORIGINAL
    for seq_len in (ORIGINAL // 2, ORIGINAL + 1, existing_target + 1, target):
        inv, attn = transformers_rope(out, seq_len)
        np.testing.assert_allclose(inv, expected, rtol=1e-6, err_msg=f"inv_freq at {seq_len}")
        assert attn == pytest.approx(src_attn * mscale, rel=1e-9)
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == target
    assert config["rope_scaling"]["original_max_position_embeddings"] == ORIGINAL
    on = json.loads((out / "ropeconvert.json").read_text())["spec"]["params"]["stacked_on"]
    assert on == {"method": "llama3", "params": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
                  "original_context": ORIGINAL, "target_context": existing_target}
    # the GGUF half: per-pair divisors of the original θ as rope_freqs, and the spec it keeps reads back the same
    reader = GGUFReader(f"{out}.gguf")
    back = spec_from_gguf(reader)
    np.testing.assert_allclose(back.freq_factors(target), plain_inv(d, theta) / expected, rtol=1e-6)  # float32 tf
    freqs = next(np.array(t.data) for t in reader.tensors if t.name == FREQS)
    np.testing.assert_allclose(freqs, plain_inv(d, theta) / expected, rtol=1e-6)
    assert back.attention_factor == pytest.approx(mscale, rel=1e-12)
    for path, source in ((out, llama31), (out.with_name(out.name + ".gguf"), None)):  # as any per-pair export
        problems, _ = verify(path, source)
        assert not problems, problems


@pytest.mark.llamacpp
def test_llama31_stack_runs_alike_in_llamacpp_past_the_existing_original(llama31, tmp_path):
    from ropeconvert.validators.parity import parity

    out = tmp_path / "llama31-yarn"
    stack(llama31, out, to="both")
    measured, _ = parity(out, out.with_name(out.name + ".gguf"), tokens=ORIGINAL + 160)
    assert measured["top1_agreement"] >= 0.99 and measured["max_abs_nll_diff"] < 0.02, measured


def test_qwen25_yarn_stacked_with_yarn_x2(qwen25, tmp_path):
    from ropeconvert.errors import UnsupportedError

    out = tmp_path / "qwen25-yarn"
    result = stack(qwen25, out)
    d, theta, existing_target = 16, 1000000.0, 4 * ORIGINAL  # factor × original (max_position_embeddings stays 256)
    src_inv, src_attn = transformers_rope(qwen25, existing_target)
    div4, mscale4 = yarn_divisors(d, theta, ORIGINAL, 4.0)
    np.testing.assert_allclose(src_inv, plain_inv(d, theta) / div4, rtol=1e-6)  # the formulas are transformers'
    assert src_attn == pytest.approx(mscale4, rel=1e-6)
    div2, mscale2 = yarn_divisors(d, theta, existing_target, 2.0)
    expected, target = src_inv / div2, 2 * existing_target
    assert result.spec.target_context == target
    for seq_len in (ORIGINAL // 2, ORIGINAL + 1, target):
        inv, attn = transformers_rope(out, seq_len)
        np.testing.assert_allclose(inv, expected, rtol=1e-6, err_msg=f"inv_freq at {seq_len}")
        assert attn == pytest.approx(mscale4 * mscale2, rel=1e-9)
    with pytest.raises(UnsupportedError, match="qwen2 GGUFs cannot express yarn"):  # the product is no YaRN
        stack(qwen25, tmp_path / "q.gguf", to="gguf")
    assert not (tmp_path / "q.gguf").exists()


def test_stack_on_a_stacked_hf_export(llama31, tmp_path):
    """A stacked HF export reads back as longrope with short = long: one set, and linear ×2 on top halves it."""
    first, out = tmp_path / "yarn", tmp_path / "yarn-linear"
    stack(llama31, first)
    result = stack(first, out, method="linear")
    assert result.spec.target_context == 4 * 16 * ORIGINAL and result.spec.params["stacked_on"]["method"] == "longrope"
    for seq_len in (ORIGINAL // 2, result.spec.target_context):
        (before, a), (after, b) = transformers_rope(first, seq_len), transformers_rope(out, seq_len)
        np.testing.assert_allclose(after, before / 2, rtol=1e-6)
        assert b == pytest.approx(a, rel=1e-9)


def test_stack_on_a_ropeconvert_gguf(llama31, tmp_path):
    """A GGUF source: its kept spec is the existing rope; the re-extended file's rope_freqs = old × YaRN."""
    from gguf import GGUFReader

    from ropeconvert.formats.gguf_rope import FREQS

    first = tmp_path / "llama3.gguf"
    convert(ConvertOptions(str(llama31), "llama3", out=first, to="gguf", knobs={"factor": 8.0}, replace_scaling=True,
                           progress=False))
    old = next(np.array(t.data, dtype=np.float64) for t in GGUFReader(first).tensors if t.name == FREQS)
    out = tmp_path / "stacked.gguf"
    result = stack(first, out, to="gguf")
    div, _ = yarn_divisors(16, 500000.0, 8 * ORIGINAL, 2.0)
    new = next(np.array(t.data, dtype=np.float64) for t in GGUFReader(out).tensors if t.name == FREQS)
    np.testing.assert_allclose(new, old * div, rtol=1e-6)
    assert result.spec.target_context == 16 * ORIGINAL


def test_compose_rules():
    """Unit rules: a longrope source keeps its short set; ntk on top folds its θ into the divisors; a longrope
    whose short set differs from its long one, or on a longrope source, is refused."""
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.spec import LONGROPE, PER_PAIR, BaseRope
    from ropeconvert.convert.stack import compose
    from ropeconvert.errors import UnsupportedError

    base = BaseRope(head_dim=16, rotary_dim=16, rope_theta=10000.0, original_context=ORIGINAL)
    long, short = list(np.linspace(1.0, 6.0, 8)), list(np.linspace(1.0, 1.5, 8))
    existing = build_spec("longrope", base, factors=long, short_factors=short, factor=4.0)
    on = BaseRope(16, 16, 10000.0, 4 * ORIGINAL)
    new = build_spec("ntk", on, factor=2.0)
    got = compose(existing, new)
    ntk_div = plain_inv(16, 10000.0) / plain_inv(16, 10000.0 * 2 ** (16 / 14))
    assert got.kind == LONGROPE and got.short_factors == pytest.approx(short, rel=1e-12)
    np.testing.assert_allclose(got.factors, np.array(long) * ntk_div, rtol=1e-12)
    assert got.attention_factor == pytest.approx(existing.attention_factor) and got.rope_theta == 10000.0
    linear = compose(build_spec("linear", base, factor=2.0),
                     build_spec("yarn", BaseRope(16, 16, 10000.0, 2 * ORIGINAL), factor=2.0))
    assert linear.kind == PER_PAIR and linear.target_context == 4 * ORIGINAL
    generic = build_spec("longrope", base, factors=long, short_factors=long, factor=4.0)  # per-pair form read back
    assert compose(generic, new).kind == PER_PAIR
    with pytest.raises(UnsupportedError, match="short factors would apply up to 1024 tokens"):
        compose(build_spec("yarn", base, factor=4.0), build_spec("longrope", on, factors=long, factor=2.0))
    with pytest.raises(UnsupportedError, match="longrope on top of the source's longrope"):
        compose(existing, build_spec("longrope", on, factors=long, short_factors=long, factor=2.0))


@pytest.fixture(scope="module")
def dynamic_source(tmp_path_factory, llama31):
    d = tmp_path_factory.mktemp("stack") / "dynamic"
    shutil.copytree(llama31, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=ORIGINAL,
                  rope_theta=500000.0)
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def selfextend_export(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("stack") / "selfextend"
    convert(ConvertOptions(str(tiny_llama), "selfextend", out=out, knobs={"factor": 2.0}, progress=False))
    return out


REFUSALS = {  # name: (source fixture, arguments, what the one line names)
    "dynamic-on-top": ("llama31", ["-m", "dynamic", "-s", "2"],
                       ["cannot put dynamic on top of the source's llama3 scaling", "no fixed per-pair divisors"]),
    "on-top-of-dynamic": ("dynamic_source", ["-m", "yarn", "-s", "2"],
                          ["cannot put yarn on top of the source's dynamic scaling", "dynamic recomputes",
                           "--replace-scaling instead of --stack"]),
    "selfextend": ("llama31", ["-m", "selfextend", "-s", "2"],
                   ["cannot put selfextend on top of the source's llama3 scaling", "remaps positions"]),
    "dpe": ("llama31", ["-m", "dpe", "--scales", "2", "-s", "2"],
            ["cannot put dpe on top of the source's llama3 scaling", "remaps positions"]),
    "on-top-of-selfextend": ("selfextend_export", ["-m", "yarn", "-s", "2"],
                             ["cannot put yarn on top of the source's selfextend position map", "remaps positions"]),
    "with-replace-scaling": ("llama31", ["-m", "yarn", "-s", "2", "--replace-scaling"],
                             ["--stack and --replace-scaling contradict each other", "pass one of them"]),
    "plain-model": ("tiny_llama", ["-m", "yarn", "-s", "2"], ["carries no rope scaling: nothing to stack on",
                                                              "drop --stack"]),
    "auto": ("llama31", ["-m", "auto", "-t", "8192"], ["--method auto does not stack"]),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_are_one_line_and_write_nothing(name, request, tmp_path):
    fixture, args, needles = REFUSALS[name]
    source, out = request.getfixturevalue(fixture), tmp_path / "out"
    proc = run_cli(source, "--stack", *args, "--out", out, "-q")
    assert_clean_refusal(proc, out, None, None, *needles)


def test_source_refusal_names_stack(llama31, tmp_path):
    proc = run_cli(llama31, "-m", "yarn", "-s", "2", "--out", tmp_path / "out", "-q")
    assert_clean_refusal(proc, tmp_path / "out", None, None, "already carries llama3", "--replace-scaling", "--stack")


def test_card_of_a_stacked_export_says_so_and_reproduces_with_stack(llama31, tmp_path):
    from helpers import run_cli

    out = tmp_path / "llama31-yarn-card"
    stack(llama31, out, to="hf")
    proc = run_cli("publish", out, "--repo", "acme/llama31-yarn", "--dry-run", "--skip-validation")
    assert proc.returncode == 0, proc.stderr
    body = (out / "README.md").read_text(encoding="utf-8")
    assert "| stacked on | the source's `llama3` scaling" in body and "stacked_on=" not in body
    reproduce = body.split("## Reproduce", 1)[1]
    assert "--method yarn --stack" in reproduce
