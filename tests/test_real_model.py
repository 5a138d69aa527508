"""Behaviour on the real SmolLM2-135M (trained at 8192 tokens): YaRN×2 rescues it past its trained length.

One session fixture runs `validate` once (the CLI's own code path) on the YaRN×2 export made by the main command:
16k tokens of Austen's Emma for perplexity (one window, BOS + 16383 tokens) and one passkey prompt of ~13k
tokens, base vs extended. Each 16k forward costs minutes on a 2-core CPU, so every assertion reads the same report.
"""
from __future__ import annotations

import json
import math

import pytest

from ropeconvert.validators.validate import Options, validate

from helpers import run_cli

pytestmark = pytest.mark.slow
PPL_LENGTH, PASSKEY_LENGTH, DEPTH = 16384, 13000, 0.5


@pytest.fixture(scope="session")
def yarn_export(smollm2_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "smollm2-135m-yarn-16k"
    proc = run_cli("smollm2-135m", "--method", "yarn", "--factor", "2", "--to", "hf", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def real_report(yarn_export):
    opts = Options(tasks=("ppl", "passkey"), lengths=(PPL_LENGTH,), passkey_lengths=(PASSKEY_LENGTH,),
                   depths=(DEPTH,), trials=1, documents=1, progress=False)
    report, _ = validate(yarn_export, "smollm2-135m", opts)
    print(json.dumps({k: report["tasks"][k] for k in ("ppl",)}, indent=1))
    return report


def test_unscaled_perplexity_blows_up_past_trained_length(real_report):
    ppl = real_report["tasks"]["ppl"]
    assert ppl["lengths"] == [PPL_LENGTH] and real_report["corpus"]["documents"] == ["emma"]
    base, ext = ppl["base"][0], ppl["extended"][0]
    assert math.isfinite(base) and math.isfinite(ext)
    assert base > 1.5 * ext, (base, ext)  # measured: unscaled ≈ 53, YaRN×2 ≈ 27


def test_yarn_export_loads_in_stock_transformers_and_beats_unscaled(yarn_export, real_report):
    """Issue 9: the export of `ropeconvert smollm2-135m --method yarn --factor 2 --to hf` is read by stock
    transformers as YaRN, and on 16k tokens of English its perplexity is below 0.75× the unscaled model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(yarn_export)
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["factor"] == 2.0
    model = AutoModelForCausalLM.from_pretrained(yarn_export)
    rotary = model.model.rotary_emb
    assert type(rotary).__name__ == "LlamaRotaryEmbedding"  # transformers' own rope, no ropeconvert code involved
    assert rotary.attention_scaling == pytest.approx(1 + 0.1 * math.log(2))
    assert real_report["spec"]["method"] == "yarn" and real_report["runtime"]["engine"] == "transformers"
    base, ext = real_report["tasks"]["ppl"]["base"][0], real_report["tasks"]["ppl"]["extended"][0]
    assert ext < 0.75 * base, (base, ext)


def test_passkey_fails_unscaled_and_passes_with_yarn(real_report):
    pk = real_report["tasks"]["passkey"]
    assert pk["lengths"] == [PASSKEY_LENGTH] and pk["tokens"][0] >= PASSKEY_LENGTH
    base, ext = pk["samples"]["base"][0], pk["samples"]["extended"][0]
    assert base["pass_key"] == ext["pass_key"] and base["tokens"] > 8192  # same prompt, past the trained length
    assert pk["base"] == [[0.0]] and not base["correct"], base["response"]
    assert pk["extended"] == [[1.0]] and ext["correct"], ext["response"]
    assert str(ext["pass_key"]) in ext["response"]


def test_real_report_passes_its_checks(real_report):
    checks = {c["name"]: c["passed"] for c in real_report["checks"]}
    assert checks == {"ppl_finite": True, "ppl_extended_below_base": True, "passkey_not_worse": True,
                      "extension_measured": True}
    assert real_report["passed"]
