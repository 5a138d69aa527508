"""Names that look like paths never make ropeconvert read or write outside the source/output directories."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from helpers import assert_one_line_error, run_cli


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("tensor_name", ["../../escaped", "/tmp/ropeconvert-escaped", "a/../../b", "..\\..\\c"])
def test_tensor_names_are_data_not_paths(tiny_llama, tmp_path, tensor_name):
    model = tmp_path / "src" / "model"
    shutil.copytree(tiny_llama, model)
    raw = json.dumps({tensor_name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    out = tmp_path / "dst" / "out"
    out.parent.mkdir()
    before = _snapshot(tmp_path)
    proc = run_cli(model, "-m", "linear", "-s", "2", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    created = sorted(set(_snapshot(tmp_path)) - set(before))
    assert all(c.startswith("dst/out") for c in created), created
    assert not any(p.name in ("escaped", "b", "c") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", ".."])
def test_index_shard_names_refused(tiny_llama_sharded, tmp_path, shard):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_sharded, model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(run_cli(model, "-m", "linear", "-s", "2", "-o", tmp_path / "out"), "not a plain file name")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../etc", "org/../../x", "org/..", "org/name/extra", "/abs/not/there"])
def test_model_names_that_are_not_ids(tmp_path, name):
    proc = run_cli(name, "-m", "linear", "-s", "2", "-o", tmp_path / "out", cwd=tmp_path)
    line = assert_one_line_error(proc)  # a path-looking name is "not found" as a path (issue 16), else not an id
    assert "unknown model" in line or "not found" in line, line
    assert not (tmp_path / "out").exists()
