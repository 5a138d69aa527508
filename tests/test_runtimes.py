"""Issue 18: every export computes the same rope in vLLM, SGLang and mlx-lm as in transformers, or the export says
it does not. Each method's exported config.json is run through each installed runtime's own rope code (validators/
runtime_check.py) before, just past and well past the original length (mistral.rs, which has no rope API, loads the
whole export); the measured agreement must equal what the
rules table (formats/runtimes.py) claims — a runtime the table calls exact must match, one it calls partial or
unsupported must really differ (so the warning is needed). Runtimes not installed skip with the reason
(`pip install 'ropeconvert[runtimes]'`, which `make install` does)."""
from __future__ import annotations

import json
import math
import sys
from functools import lru_cache

import numpy as np
import pytest

from ropeconvert.cli import main
from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config, hf_config_for
from ropeconvert.formats.hub_export import load_export
from ropeconvert.formats.model_card import render_card
from ropeconvert.formats.runtimes import LABELS, RUNTIMES, export_warnings, rule
from ropeconvert.validators import runtime_check

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 64, "num_hidden_layers": 1,
          "vocab_size": 64, "rope_theta": 10000.0, "max_position_embeddings": 256}
N_PAIRS = 32
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
MEASURED = ("vllm", "sglang", "mlx-lm")


def spec_for(case: str):
    method, knobs = CASES[case]
    return build_spec(method, base_rope_from_config(CONFIG), **knobs)


@lru_cache(maxsize=None)
def measured(case: str, tmp: str) -> dict:
    from pathlib import Path

    spec = spec_for(case)
    out = Path(tmp) / case
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config_for(spec, CONFIG)))
    return runtime_check.check_runtimes(out, runtimes=("transformers", *MEASURED), spec=spec)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("runtimes"))


@pytest.mark.parametrize("runtime", MEASURED)
@pytest.mark.parametrize("case", CASES)
def test_runtime_rope_equals_transformers_or_is_declared(case, runtime, work):
    assert runtime_check.installed(runtime), f"{runtime} is not installed: make install puts the [runtimes] extra in"
    row = measured(case, work)["runtimes"][runtime]
    expected = rule(runtime, spec_for(case))
    values = {k: row[k] for k in ("short", "edge", "long")}
    if expected.status in ("exact", "flags"):
        assert row["match"], f"{runtime} differs from transformers on {case}: {values}"
    else:  # the documented difference is real, so the export's warning is needed
        assert not row["match"], f"{runtime} matches on {case} but the rules table says {expected}"
        assert any(LABELS[runtime] in w for w in export_warnings(spec_for(case)))


@pytest.mark.parametrize("case", CASES)
def test_mistralrs_loads_exactly_what_the_table_says(case, tiny_llama, tmp_path):
    """mistral.rs runs whole models only: the export must load and serve the target length where the table says
    exact, and be refused (or capped at the original length) where it says not."""
    assert runtime_check.installed("mistral.rs"), "mistralrs is not installed: make install puts the [runtimes] extra in"
    method, knobs = CASES[case]
    base = base_rope_from_config(json.loads((tiny_llama / "config.json").read_text()))
    knobs = {k: (v[:: len(v) // base.n_pairs][: base.n_pairs] if isinstance(v, list) else v) for k, v in knobs.items()}
    spec = build_spec(method, base, **knobs)
    path, _ = write_hf_export(tiny_llama, spec, tmp_path / case, progress=False, link=True)
    row = runtime_check.check_runtimes(path, runtimes=("mistral.rs",), spec=spec)["runtimes"]["mistral.rs"]
    expected = rule("mistral.rs", spec)
    assert row["match"] == (expected.status == "exact"), (row, expected)
    if expected.status == "unsupported":
        assert "unknown variant" in row["loads"]
    elif expected.status == "partial":  # linear: max_position_embeddings stays the original (vLLM/SGLang policy)
        assert row["max_sequence_length"] == spec.original_context


def test_transformers_reference_matches_itself(work):
    row = measured("yarn", work)["runtimes"]["transformers"]
    assert row["match"] and row["long"] == 0.0


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
    assert "--tasks parity" in lines["llama.cpp"]


def test_check_runtimes_refuses_a_gguf_path(tmp_path, capsys, monkeypatch):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "argv", ["ropeconvert", "check-runtimes", str(gguf)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "--tasks parity" in err
