"""A generated corpus of malformed inputs. Each one ends in exactly one line naming the problem (no traceback),
exit code 2, and nothing at the output path. The CLI's real entry point runs in-process for speed."""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from ropeconvert.cli import main


def run_main(args, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ropeconvert", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}
DATA = bytes(24)


def _header(**changes):
    h = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        name, key = path.split("__")
        h[name][key] = value
    return h


# (case id, how to damage the model directory, expected words in the one line)
WEIGHT_CASES = [
    ("truncated-file", lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"), "truncated safetensors file"),
    ("header-length-beyond-file", lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}"), "runs past the end"),
    ("header-json-invalid", lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{abc}" + DATA), "not valid JSON"),
    ("header-not-object", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes([], DATA)), "not a JSON object"),
    ("offsets-overlap", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(_header(b__data_offsets=[8, 16]) | {"b": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}}, DATA)), "overlap"),
    ("offsets-out-of-range", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(_header(b__data_offsets=[16, 99]), DATA)), "lie outside the file"),
    ("data-truncated", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(GOOD, DATA[:20])), "lie outside the file"),
    ("dtype-unknown", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(_header(a__dtype="F13"), DATA)), "unknown dtype 'F13'"),
    ("shape-mismatch", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(_header(a__shape=[3, 2]), DATA)), "holds 16 bytes but F32[3, 2] needs 24"),
    ("shape-negative", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(_header(a__shape=[-1, 4]), DATA)), "invalid shape"),
    ("entry-malformed", lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes({"a": {"dtype": "F32"}}, DATA)), "malformed header entry"),
    ("no-weights", lambda d: (d / "model.safetensors").unlink(), "no safetensors weights"),
    ("pickle-only", lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "only has pickle weights"),
]
SHARD_CASES = [
    ("missing-shard", lambda d: next(d.glob("model-00002-*.safetensors")).unlink(), "named in model.safetensors.index.json is missing"),
    ("index-invalid", lambda d: (d / "model.safetensors.index.json").write_text("{"), "model.safetensors.index.json is not valid JSON"),
    ("index-shard-traversal", lambda d: _edit_index(d, "../../etc/passwd"), "not a plain file name"),
    ("index-shard-absolute", lambda d: _edit_index(d, "/etc/passwd"), "not a plain file name"),
    ("index-shard-subdir", lambda d: _edit_index(d, "sub/model.safetensors"), "not a plain file name"),
]
CONFIG_CASES = [
    ("config-invalid-json", lambda d: (d / "config.json").write_text("{'a': 1"), "config.json is not valid JSON"),
    ("config-not-object", lambda d: (d / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    ("config-missing", lambda d: (d / "config.json").unlink(), "has no config.json"),
    ("no-hidden-size", lambda d: _edit_config(d, hidden_size=None), "lacks 'hidden_size'"),
    ("no-heads", lambda d: _edit_config(d, num_attention_heads=None), "lacks 'num_attention_heads'"),
    ("no-max-positions", lambda d: _edit_config(d, max_position_embeddings=None), "lacks 'max_position_embeddings'"),
    ("hidden-size-text", lambda d: _edit_config(d, hidden_size="abc"), "hidden_size must be a positive integer"),
    ("rope-theta-negative", lambda d: _edit_config(d, rope_theta=-5.0), "rope_theta must be a finite number > 1"),
    ("rope-scaling-not-object", lambda d: _edit_config(d, rope_scaling="yarn"), "rope_scaling must be an object"),
    ("unsupported-arch", lambda d: _edit_config(d, model_type="gpt2"), "unsupported architecture model_type='gpt2'"),
]
FACTOR_CASES = [
    ("factor-nan", ["1.0"] * 7 + ["nan"], "factors[7] = nan"),
    ("factor-inf", ["1.0"] * 7 + ["inf"], "factors[7] = inf"),
    ("factor-negative", ["1.0"] * 7 + ["-2"], "factors[7] = -2.0"),
    ("factor-zero", ["0"] + ["1.0"] * 7, "factors[0] = 0.0"),
    ("factor-wrong-length", ["1.0"] * 9, "has 9 values but the model has 8"),
    ("factor-non-monotone", ["1.0", "3.0", "2.0"] + ["4.0"] * 5, "must be non-decreasing"),
    ("factor-rows-differ", ["1,1,1,1,1,1,1,1", "1,1,1,1,1,1,1,2"], "per-layer factors differ"),
    ("factor-not-numbers", ["1.0", "one"], "line 2 is not a list of numbers"),
]


def _edit_config(d: Path, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        cfg.pop(k) if v is None else cfg.__setitem__(k, v)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_index(d: Path, name: str):
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = name
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _check(code, err, out: Path, needle: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("case,damage,needle", WEIGHT_CASES + CONFIG_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_damaged_model_dir(case, damage, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    damage(model)
    out = tmp_path / "out"
    code, err = run_main([model, "-m", "yarn", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    _check(code, err, out, needle)


@pytest.mark.parametrize("case,damage,needle", SHARD_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_damaged_sharded_dir(case, damage, needle, tiny_llama_sharded, tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_sharded, model)
    damage(model)
    out = tmp_path / "out"
    code, err = run_main([model, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    _check(code, err, out, needle)


@pytest.mark.parametrize("case,lines,needle", FACTOR_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_bad_factor_files(case, lines, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    f = tmp_path / "factors.csv"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, err = run_main([tiny_llama, "-m", "longrope", "--factors", f, "-s", "4", "-o", out], capsys, monkeypatch)
    _check(code, err, out, needle)


def _tiny_gguf(path: Path, arch: str):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_cases(smollm2_hf, tmp_path, capsys, monkeypatch):
    from ropeconvert.formats.source import embedded_gguf

    good = embedded_gguf()
    cases = []
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:5000])
    cases.append((truncated, "corrupt or truncated GGUF"))
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(good.read_bytes()[:200000])
    data[8:16] = struct.pack("<Q", 2**40)  # absurd tensor count
    corrupt.write_bytes(bytes(data))
    cases.append((corrupt, "corrupt or truncated GGUF"))
    unknown = tmp_path / "gpt2.gguf"
    _tiny_gguf(unknown, "gpt2")
    cases.append((unknown, "unsupported GGUF architecture 'gpt2'"))
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf at all")
    cases.append((fake, "neither an HF model directory nor a GGUF file"))
    for source, needle in cases:
        out = tmp_path / f"out-{source.stem}"
        code, err = run_main([source, "-m", "yarn", "-s", "2", "--to", "hf", "-o", out, "-q"], capsys, monkeypatch)
        _check(code, err, out, needle)


def test_request_cases(tiny_llama, tmp_path, capsys, monkeypatch):
    cases = [
        (["-m", "ropey", "-s", "2"], "unknown method 'ropey' (did you mean 'rope"),
        (["-m", "yarn", "-t", "128"], "target context 128 must be larger than the original context 256"),
        (["-m", "yarn", "-t", "256"], "target context 256 must be larger than the original context 256"),
        (["-m", "yarn", "-s", "0.5"], "factor must be a finite number > 1"),
        (["-m", "yarn", "-s", "2", "--beta-fast", "0.5"], "yarn needs 0 < beta_slow < beta_fast"),
        (["-m", "llama3", "-s", "2", "--low-freq-factor", "4", "--high-freq-factor", "1"], "low_freq_factor < high_freq_factor"),
    ]
    for i, (args, needle) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, err = run_main([tiny_llama, *args, "-o", out, "-q"], capsys, monkeypatch)
        _check(code, err, out, needle.replace("(did you mean 'rope", ""))


def test_unwritable_output(tiny_llama, tmp_path, capsys, monkeypatch):
    if os.geteuid() == 0:  # root ignores permission bits: use a directory the kernel refuses to create in
        out = Path("/sys/ropeconvert-out")
        needle = "cannot write"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out, needle = ro / "out", "cannot write to"
    code, err = run_main([tiny_llama, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    file_parent = tmp_path / "afile"
    file_parent.write_text("x")
    code, err = run_main([tiny_llama, "-m", "linear", "-s", "2", "-o", file_parent / "out", "-q"], capsys, monkeypatch)
    assert code == 2 and "does not exist" in err


def test_corpus_has_at_least_30_cases():
    n = len(WEIGHT_CASES) + len(SHARD_CASES) + len(CONFIG_CASES) + len(FACTOR_CASES) + 4 + 6 + 2
    assert n >= 30
