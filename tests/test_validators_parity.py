"""Parity between the two runtimes, and validating a GGUF export in llama.cpp.

The real SmolLM2-135M weights with their config told the model was trained at 256 tokens: rope changes then show up
in a few hundred tokens (cheap), with a real model's position-sensitive attention (a random tiny model's attention is
nearly uniform, so a wrong rope would hardly move its logits)."""
from __future__ import annotations

import json
import os

import jsonschema
import pytest

from ropeconvert.validators import report as R

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.llamacpp
import llama_cpp  # noqa: E402,F401  (make installs it: a missing llama.cpp is a failure, not a skip)
SHORT = 256


@pytest.fixture(scope="module")
def smol_short(smollm2_hf, tmp_path_factory):
    """SmolLM2-135M whose config says original context 256 (weights hard-linked, not copied)."""
    out = tmp_path_factory.mktemp("smol") / "smol-256"
    out.mkdir()
    for f in smollm2_hf.iterdir():
        if f.name == "config.json":
            config = json.loads(f.read_text())
            config["max_position_embeddings"] = SHORT
            (out / f.name).write_text(json.dumps(config))
        else:
            os.link(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def exports(smol_short, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for method, to in (("yarn", "both"), ("linear", "gguf")):
        out = root / f"smol-{method}"
        args = ["--out", out if to == "both" else out.with_suffix(".gguf")]
        proc = run_cli(smol_short, "--method", method, "--factor", "2", "--to", to, *args, "--link", "-q")
        assert proc.returncode == 0, proc.stderr
        made[method] = out
    return made["yarn"], made["yarn"].with_name("smol-yarn.gguf"), made["linear"].with_suffix(".gguf")


def test_parity_same_rope_agrees(exports):
    hf, gguf, _ = exports
    proc = run_cli("validate", "--parity", hf, gguf, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["tokens"] == 2 * SHORT  # runs to the target: past the original length
    assert 0.98 < p["ratio"] < 1.02 and p["top1_agreement"] >= 0.95, p
    report = json.loads((gguf.with_name("smol-yarn.report") / "report.json").read_text())
    assert report["tasks"]["parity"]["ratio"] == p["ratio"]
    assert {c["name"]: c["passed"] for c in report["checks"]} == {"parity_ppl_ratio": True, "parity_top1": True}


def test_parity_detects_a_different_rope(exports, tmp_path):
    hf, _, linear = exports
    proc = run_cli("validate", "--parity", hf, linear, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    report = json.loads((linear.with_name("smol-linear.report") / "report.json").read_text())
    assert not report["passed"], p  # YaRN in transformers vs PI in llama.cpp must not look equal
    assert p["top1_agreement"] < 0.95 or not 0.98 < p["ratio"] < 1.02


def test_validate_gguf_export_in_llamacpp(exports, smol_short):
    """A GGUF export is measured by llama.cpp against the source run in the same tokens; the parity already in
    its report is kept."""
    _, gguf, _ = exports
    proc = run_cli("validate", gguf, "--base", smol_short, "--tasks", "ppl,passkey", "--lengths", "128,512",
                   "--passkey-lengths", "512", "--depths", "0.5", "--trials", "1", "--documents", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    report_dir = gguf.with_name("smol-yarn.report")
    report = json.loads((report_dir / "report.json").read_text())
    jsonschema.validate(report, R.schema())
    assert report["runtime"]["engine"] == "llama.cpp" and report["runtime"]["dtype"] == "f16"
    assert any("base ran in transformers" in n for n in report["notes"])
    assert set(report["tasks"]) == {"ppl", "passkey", "parity"}
    assert all(v is not None and v > 1 for v in report["tasks"]["ppl"]["extended"])
    assert (report_dir / "ppl.png").is_file() and (report_dir / "passkey.png").is_file()


def test_parity_bad_input(exports):
    hf, gguf, _ = exports
    assert_one_line_error(run_cli("validate", "--parity", gguf, hf), "--parity takes an HF export directory then a .gguf")
    assert_one_line_error(run_cli("validate", "--parity", hf, hf.with_name("missing.gguf")), "does not exist")
