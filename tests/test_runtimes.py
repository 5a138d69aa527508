"""Issue 18: every export computes the same rope in vLLM, SGLang, mlx-lm, mistral.rs and llama.cpp as in
transformers, or the export says it does not. Each method is exported from a tiny random Llama and Phi-3 (fused
qkv/gate_up projections; weights sharpened so attention depends on position) and run through every runtime
(validators/runtime_check.py): vLLM's, SGLang's and mlx-lm's own rope code on the rotated query, mistral.rs (the
export) and llama.cpp (the `--to gguf` export of it) on log-probs of the same tokens, before, just past and well
past the original length. The measured agreement must equal what the rules table (formats/runtimes.py) claims — a
runtime the table calls exact must match, one it calls partial or unsupported must really differ or refuse (so the
export's warning is needed). Every runtime is installed by `make install` (the [runtimes] and [llamacpp] extras)."""
from __future__ import annotations

import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from ropeconvert.cli import main
from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config, hf_config_for
from ropeconvert.formats.hub_export import load_export
from ropeconvert.formats.model_card import render_card
from ropeconvert.formats.runtimes import LABELS, RUNTIMES, export_warnings, rule
from ropeconvert.formats.source import read_config
from ropeconvert.validators import runtime_check

from conftest import make_tiny_model

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 1,
          "vocab_size": 64, "rope_theta": 10000.0, "max_position_embeddings": 256}
N_PAIRS = 8  # the tiny models' head_dim 16
LONG = [round(v, 2) for v in np.linspace(1.0, 5.0, N_PAIRS)]
SHORT = [round(v, 2) for v in np.linspace(1.0, 2.0, N_PAIRS)]
CASES = {  # factor 4 on a 256-token model, as in the issue
    "linear": ("linear", {"factor": 4.0}),
    "ntk": ("ntk", {"factor": 4.0}),
    "dynamic": ("dynamic", {"factor": 4.0}),
    "yarn": ("yarn", {"factor": 4.0}),
    "yarn-betas-mscale": ("yarn", {"factor": 4.0, "beta_fast": 64.0, "beta_slow": 2.0, "mscale": 0.8,
                                   "mscale_all_dim": 0.5}),
    "yarn-attention-1.5": ("yarn", {"factor": 4.0, "attention_factor": 1.5}),
    "llama3": ("llama3", {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "longrope": ("longrope", {"factor": 4.0, "factors": LONG, "short_factors": SHORT}),
    "longrope-attention-1.3": ("longrope", {"factor": 4.0, "factors": LONG, "attention_factor": 1.3}),
}
# transformers' Phi3Config accepts rope type longrope only (its validate_rope), as real Phi-3 checkpoints carry; ntk
# writes no rope dict at all
MATRIX = [("llama", case) for case in CASES] + [("phi3", c) for c in ("ntk", "longrope")]  # phi3 takes no custom attention factor
ARCHS = ("llama", "phi3")
COMPARED = ("vllm", "sglang", "mlx-lm", "mistral.rs", "llama.cpp")


def sharp_model(out: Path, tokenizer_dir: Path, model_type: str) -> Path:
    """The tiny random model (2 layers, head_dim 16, original context 256) with weights ×5 and Q/K ×10 more, so that
    a rope change moves log-probs well past the runtimes' tolerance (test_each_method_moves_the_logprobs)."""
    import torch
    from transformers import AutoModelForCausalLM

    make_tiny_model(out, tokenizer_dir, model_type=model_type, original_max_position_embeddings=256,
                    pad_token_id=2)  # Phi3Config's default pad id (32000) is outside the tiny vocabulary
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p *= 5.0
                if "q_proj" in name or "k_proj" in name:
                    p *= 10.0
                elif "qkv_proj" in name:  # phi3's fused projection: Q and K rows first, then V
                    p[: p.shape[0] - p.shape[0] // 4] *= 10.0
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("runtimes")
    for arch in ARCHS:
        sharp_model(root / arch, small_tokenizer, arch)
    return root


def spec_for(case: str, arch: str = "config"):
    method, knobs = CASES[case]
    base = base_rope_from_config(CONFIG) if arch == "config" else base_rope_from_config(read_config(WORK[0] / arch))
    return build_spec(method, base, **knobs)


WORK: list[Path] = []  # the module's models, for the cached measurement below


@lru_cache(maxsize=None)
def measured(arch: str, case: str) -> dict:
    spec = spec_for(case, arch)
    path, _ = write_hf_export(WORK[0] / arch, spec, WORK[0] / f"{arch}-{case}", progress=False, link=True)
    return runtime_check.check_runtimes(path, spec=spec)


@pytest.fixture(scope="module", autouse=True)
def _work(work):
    WORK[:] = [work]
    yield
    measured.cache_clear()


@pytest.mark.parametrize("runtime", COMPARED)
@pytest.mark.parametrize("arch,case", MATRIX)
def test_runtime_equals_transformers_or_is_declared(arch, case, runtime):
    assert runtime_check.installed(runtime), f"{runtime} is not installed: make install puts the extras in"
    row = measured(arch, case)["runtimes"][runtime]
    spec = spec_for(case, arch)
    expected = rule(runtime, spec)
    values = {k: row.get(k) for k in ("short", "edge", "long", "loads", "refused")}
    if expected.status in ("exact", "flags"):
        assert row["match"], f"{runtime} differs from transformers on {arch} {case}: {values}"
        return
    # the documented difference is real, so the export's warning is needed
    assert not row["match"], f"{runtime} matches on {arch} {case} but the rules table says {expected}"
    assert any(LABELS[runtime] in w for w in export_warnings(spec))
    if runtime == "mistral.rs" and expected.status == "unsupported":
        assert "unknown variant" in row["loads"], values
    elif runtime == "mistral.rs" and spec.kind == "linear":  # max_position_embeddings stays the original
        assert row["max_sequence_length"] == spec.original_context
        assert row["short"] <= runtime_check.LOGPROB_TOLERANCE["mistral.rs"] and "greater than" in row["edge"]
    elif runtime == "mistral.rs":  # phi3 longrope: its own longrope agrees only within the original length
        assert row["short"] <= runtime_check.LOGPROB_TOLERANCE["mistral.rs"], values
    elif runtime == "llama.cpp":  # dynamic without --static: `--to gguf` refuses, as the table says
        assert "no dynamic NTK" in row["refused"], values


@pytest.mark.parametrize("arch,case", MATRIX)
def test_each_method_moves_the_logprobs(arch, case):
    """The base model's log-probs past the original length differ from the export's by far more than the
    whole-model tolerance, so a runtime ignoring the export's rope could not match."""
    result = measured(arch, case)
    prompts = runtime_check._prompts(WORK[0] / arch, {"long": result["model_lengths"]["long"]})
    base = runtime_check._reference(WORK[0] / arch, prompts)["long"][0]
    export = runtime_check._reference(WORK[0] / f"{arch}-{case}", prompts)["long"][0]
    assert np.abs(base - export)[256:].mean() > 2 * runtime_check.LOGPROB_TOLERANCE["llama.cpp"]


def test_position_maps_run_in_transformers_only(work):
    spec = build_spec("selfextend", base_rope_from_config(read_config(work / "llama")), factor=4.0)
    path, _ = write_hf_export(work / "llama", spec, work / "llama-selfextend", progress=False, link=True)
    rows = runtime_check.check_runtimes(path, spec=spec)["runtimes"]
    assert rows["transformers"]["match"]
    for name in COMPARED:
        assert rule(name, spec).status == "unsupported" and rows[name]["skipped"].startswith("not supported: ")
    assert {w.split()[1] for w in export_warnings(spec)} == {LABELS[n] for n in COMPARED}


def test_transformers_reference_matches_itself_and_config_only_skips_whole_models(tmp_path):
    spec = spec_for("yarn", "config")
    (tmp_path / "config.json").write_text(json.dumps(hf_config_for(spec, CONFIG)))
    rows = runtime_check.check_runtimes(tmp_path, runtimes=("transformers", "mlx-lm", "llama.cpp"), spec=spec)
    assert rows["runtimes"]["transformers"]["match"] and rows["runtimes"]["transformers"]["long"] == 0.0
    assert rows["runtimes"]["mlx-lm"]["match"] and rows["runtimes"]["vllm"]["skipped"] == "not requested"
    assert rows["runtimes"]["llama.cpp"]["skipped"] == "the export has no weights (config.json only)"


def test_writer_encodings_every_runtime_reads():
    yarn = hf_config_for(spec_for("yarn-attention-1.5"), CONFIG)["rope_scaling"]
    assert "attention_factor" not in yarn and yarn["mscale_all_dim"] == 1.0
    t = 0.1 * math.log(4.0)
    assert (0.1 * yarn["mscale"] * math.log(4.0) + 1) / (1 + t) == pytest.approx(1.5, rel=1e-12)
    longrope = hf_config_for(spec_for("longrope-attention-1.3"), CONFIG)["rope_scaling"]
    assert longrope["attention_factor"] == longrope["long_mscale"] == longrope["short_mscale"] == 1.3
    ntk = hf_config_for(spec_for("ntk"), CONFIG)
    assert "rope_scaling" not in ntk and "rope_parameters" not in ntk  # mistral.rs refuses a factor-less dict
    assert ntk["max_position_embeddings"] == 1024
    # the max_position_embeddings policy: original where vLLM/SGLang multiply by factor, else the target
    assert {c: hf_config_for(spec_for(c), CONFIG)["max_position_embeddings"] for c in ("linear", "dynamic", "yarn",
            "llama3", "longrope")} == {"linear": 256, "dynamic": 256, "yarn": 1024, "llama3": 1024, "longrope": 1024}


def test_warnings_name_runtime_and_alternative():
    assert export_warnings(spec_for("llama3")) == []
    dynamic = export_warnings(spec_for("dynamic"))
    assert [w.split()[1] for w in dynamic] == ["vLLM", "SGLang", "mistral.rs", "llama.cpp"]
    assert all(w.startswith("RUNTIME: ") and ("--method ntk" in w or "--static" in w) for w in dynamic)
    assert rule("vllm", spec_for("longrope")).flags == "--max-model-len 1024"


def test_manifest_and_card_carry_the_runtimes(tiny_llama, tmp_path):
    spec = build_spec("dynamic", base_rope_from_config(json.loads((tiny_llama / "config.json").read_text())),
                      factor=4.0)
    path, notes = write_hf_export(tiny_llama, spec, tmp_path / "dyn", progress=False)
    assert any(n.startswith("RUNTIME: vLLM cannot run dynamic") for n in notes)
    manifest = json.loads((path / "ropeconvert.json").read_text())
    assert set(manifest["runtimes"]) == set(RUNTIMES)
    assert manifest["runtimes"]["vllm"]["status"] == "unsupported" and "--method ntk" in manifest["runtimes"]["vllm"]["note"]
    card = render_card(load_export(path), repo_id="me/dyn", base_id=None, license_fields={}, license_note=None)
    section = card.split("## Runs in")[1].split("\n## ")[0]
    assert "| vLLM | ✘ not supported" in section and "| mlx-lm | ✔ exact |" in section


def test_check_runtimes_cli_prints_matrix_and_lists_missing(tiny_llama, tmp_path, capsys, monkeypatch):
    spec = build_spec("yarn", base_rope_from_config(json.loads((tiny_llama / "config.json").read_text())), factor=2.0)
    path, _ = write_hf_export(tiny_llama, spec, tmp_path / "y", progress=False)
    real = runtime_check.installed
    monkeypatch.setattr(runtime_check, "installed", lambda name: name != "sglang" and real(name))
    monkeypatch.setattr(sys, "argv", ["ropeconvert", "check-runtimes", str(path)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code in (0, None), out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "match" in lines["transformers"]
    assert "not installed" in lines["SGLang"]
    assert "refused (ValueError: unknown variant `yarn`" in lines["mistral.rs"] or "not installed" in lines["mistral.rs"]
    assert lines["llama.cpp"].split()[1] == "match", out  # the `--to gguf` export of it, run by llama.cpp


def test_check_runtimes_refuses_a_gguf_path(tmp_path, capsys, monkeypatch):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "argv", ["ropeconvert", "check-runtimes", str(gguf)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    # the hint names `validate --parity` (`--tasks parity` is refused, pointing there)
    assert e.value.code == 2 and err.startswith("error: ") and "validate --parity" in err


@pytest.mark.parametrize("method,knobs", [("yarn", ["-s", "4"]), ("linear", ["-s", "4"]), ("llama3", ["-s", "4"])])
def test_phi3_hf_export_refuses_a_rope_transformers_phi3_cannot_load(work, tmp_path, method, knobs):
    """transformers' Phi3Config takes only longrope (4.57 and 5.24): writing yarn/linear/llama3 for phi3 would make
    an export no runtime's phi3 model loads; refused with one line, nothing written, and `--to gguf` still works."""
    from helpers import assert_clean_refusal, run_cli, tree_digest

    src = work / "phi3"
    out = tmp_path / "phi3-hf"
    before = tree_digest(src)
    proc = run_cli(src, "-m", method, *knobs, "--to", "hf", "-o", out, "-q")
    assert_clean_refusal(proc, out, src, before, "takes only rope type longrope", "--to gguf")
    gguf = run_cli(src, "-m", method, *knobs, "--to", "gguf", "-o", tmp_path / "phi3.gguf", "-q")
    assert gguf.returncode == 0, gguf.stderr
