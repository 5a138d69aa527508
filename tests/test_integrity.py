"""Manifest and `ropeconvert verify`: intact exports pass, a flipped byte or a changed rope is caught."""
from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, run_cli, sha256


@pytest.fixture
def export(tiny_llama, tmp_path):
    out = tmp_path / "exp"
    assert run_cli(tiny_llama, "-m", "yarn", "-s", "4", "-o", out, "-q").returncode == 0
    return out


def test_manifest_lists_every_file_with_sha256(export, tiny_llama):
    manifest = json.loads((export / "ropeconvert.json").read_text())
    names = sorted(p.name for p in export.iterdir() if p.name != "ropeconvert.json")
    assert sorted(manifest["files"]) == names
    for name in names:
        assert manifest["files"][name]["sha256"] == sha256(export / name)
    assert manifest["weights"] == ["model.safetensors"] and manifest["source_name"] == tiny_llama.name
    assert "source_path" not in manifest and str(tiny_llama.parent) not in json.dumps(manifest)  # no machine path
    assert manifest["spec"]["method"] == "yarn"


def test_verify_intact(export, tiny_llama):
    proc = run_cli("verify", export)
    assert proc.returncode == 0, proc.stderr
    assert "sha256 ok" in proc.stdout and "rope equals the spec" in proc.stdout
    proc = run_cli("verify", export, "--source", tiny_llama)
    assert proc.returncode == 0 and "byte-identical to the source" in proc.stdout


def test_verify_detects_flipped_byte(export, tiny_llama):
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    proc = run_cli("verify", export, "--source", tiny_llama)
    assert_one_line_error(proc, "verification failed", "model.safetensors: sha256 differs")
    assert "not byte-identical to the source" in proc.stdout


def test_verify_detects_changed_rope(export):
    config = json.loads((export / "config.json").read_text())
    config["rope_scaling"]["factor"] = 8.0
    (export / "config.json").write_text(json.dumps(config))
    proc = run_cli("verify", export)
    assert_one_line_error(proc, "verification failed")
    assert "FAIL  config.json: size" in proc.stdout and "rope differs from the spec" in proc.stdout


def test_verify_linked_export(tiny_llama, tmp_path):
    out = tmp_path / "linked"
    assert run_cli(tiny_llama, "-m", "linear", "-s", "2", "-o", out, "--link", "-q").returncode == 0
    manifest = json.loads((out / "ropeconvert.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] is None  # O(1) export: not hashed
    proc = run_cli("verify", out)
    assert proc.returncode == 0 and "hard-linked weights (--link), not hashed; pass --source" in proc.stdout
    proc = run_cli("verify", out, "--source", tiny_llama)
    assert proc.returncode == 0 and "byte-identical to the source" in proc.stdout


def test_verify_ntk_export(tiny_llama, tmp_path):
    out = tmp_path / "ntk"
    assert run_cli(tiny_llama, "-m", "ntk", "-s", "2", "-o", out, "-q").returncode == 0
    assert run_cli("verify", out).returncode == 0
    config = json.loads((out / "config.json").read_text())
    assert "rope_scaling" not in config  # ntk is plain rope with the new base, no rope dict (issue 18)
    config["rope_theta"] = 10000.0
    (out / "config.json").write_text(json.dumps(config))
    assert "rope differs" in run_cli("verify", out).stdout


def test_verify_refuses_non_export(tiny_llama):
    assert_one_line_error(run_cli("verify", tiny_llama), "has no ropeconvert.json")


# ---- GGUF exports: the digest sealed inside the file, rope = spec, re-extension bytes = source -----------------

@pytest.fixture
def gguf_export(tiny_llama, tmp_path):
    out = tmp_path / "exp.gguf"
    proc = run_cli(tiny_llama, "-m", "yarn", "-s", "4", "--to", "gguf", "--outtype", "f16", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def test_gguf_verify_intact_and_provenance(gguf_export, tiny_llama):
    from ropeconvert.formats.gguf_read import field, open_gguf

    reader = open_gguf(gguf_export)
    assert field(reader, "ropeconvert.source_name") == tiny_llama.name and field(reader, "ropeconvert.source_path") is None
    assert len(field(reader, "ropeconvert.sha256")) == 64  # the whole-file seal (older exports: tensor_data_sha256)
    proc = run_cli("verify", gguf_export)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sha256 of metadata and tensor data ok" in proc.stdout and "rope keys and tensors equal the spec" in proc.stdout


def test_gguf_verify_detects_flipped_byte(gguf_export):
    data = bytearray(gguf_export.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor
    gguf_export.write_bytes(bytes(data))
    assert_one_line_error(run_cli("verify", gguf_export), "verification failed", "sha256 differs")


def test_gguf_verify_detects_changed_rope(gguf_export):
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_export), "r+")  # edit a rope key in place, as gguf-set-metadata would
    reader.fields["llama.rope.scaling.factor"].parts[-1][0] = 8.0
    del reader
    proc = run_cli("verify", gguf_export)
    assert_one_line_error(proc, "verification failed", "sha256 differs")
    assert "rope metadata differs from the spec: scaling_factor" in proc.stdout


def test_gguf_reextension_verified_against_source(tmp_path):
    out = tmp_path / "smol.gguf"
    assert run_cli("smollm2-135m", "-m", "yarn", "-s", "4", "--to", "gguf", "-o", out, "-q").returncode == 0
    proc = run_cli("verify", out)
    assert proc.returncode == 0 and "tensor bytes identical to the source" in proc.stdout, proc.stdout + proc.stderr
