"""`--to gguf` / `--to both` through the real CLI: what gets written, and bad input refused in one line (exit 2)
with nothing left at the output path."""
from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGUFReader, GGUFWriter

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.gguf import write_gguf_export
from ropeconvert.formats.gguf_rope import read_rope
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import embedded_gguf, read_config

from helpers import assert_one_line_error, run_cli


def only(tmp_path, *names):
    """The directory holds exactly these entries: no output, no temporary left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_to_both_writes_hf_dir_and_gguf_beside_it(tiny_llama, tmp_path):
    out = tmp_path / "ext"
    proc = run_cli(tiny_llama, "-m", "llama3", "-s", "4", "--to", "both", "--out", out, "--outtype", "f32", "-q", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["outputs"] == {"hf": str(out), "gguf": str(out) + ".gguf"}
    assert (out / "config.json").is_file() and json.loads((out / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"
    rope = read_rope(GGUFReader(str(out) + ".gguf"))
    assert rope.context_length == 1024 and set(rope.tensors) == {"rope_freqs.weight"}
    only(tmp_path, "ext", "ext.gguf")


def test_default_gguf_name(tiny_llama, tmp_path):
    proc = run_cli(tiny_llama, "-m", "ntk", "-s", "2", "--to", "gguf", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    only(tmp_path, "tiny-llama-ntk-512.gguf")


@pytest.mark.parametrize("cut", [0.02, 0.9])  # inside the metadata, inside the tensor data
def test_truncated_gguf(cut, tmp_path):
    data = embedded_gguf().read_bytes()
    src = tmp_path / "cut.gguf"
    src.write_bytes(data[: int(len(data) * cut)])
    proc = run_cli(src, "-m", "yarn", "-s", "2", "--to", "gguf", "--out", tmp_path / "x.gguf", "-q")
    assert_one_line_error(proc, "cut.gguf", "truncated")
    only(tmp_path, "cut.gguf")


def test_unsupported_gguf_arch(tmp_path):
    src = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(src), "gpt2")
    writer.add_context_length(1024)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    proc = run_cli(src, "-m", "yarn", "-s", "2", "--to", "gguf", "--out", tmp_path / "x.gguf", "-q")
    assert_one_line_error(proc, "unsupported GGUF architecture 'gpt2'", "supported: llama")
    only(tmp_path, "gpt2.gguf")


def test_unsupported_hf_arch(tiny_llama, tmp_path):
    src = tmp_path / "gemma"
    shutil.copytree(tiny_llama, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    proc = run_cli(src, "-m", "yarn", "-s", "2", "--to", "gguf", "--out", tmp_path / "x.gguf", "-q")
    assert_one_line_error(proc, "gemma", "supported")
    only(tmp_path, "gemma")


@pytest.mark.parametrize("to", ["gguf", "both"])
def test_method_the_arch_cannot_express(to, tiny_qwen2, tmp_path):
    proc = run_cli(tiny_qwen2, "-m", "llama3", "-s", "4", "--to", to, "--out", tmp_path / "x", "-q")
    assert_one_line_error(proc, "qwen2 GGUFs cannot express llama3", "qwen2 takes: linear, ntk, yarn")
    only(tmp_path)


def test_dynamic_needs_static_and_then_bakes_the_base(tiny_llama, tmp_path):
    proc = run_cli(tiny_llama, "-m", "dynamic", "-s", "2", "--to", "gguf", "--out", tmp_path / "d.gguf", "-q")
    assert_one_line_error(proc, "no dynamic NTK", "--static")
    only(tmp_path)
    proc = run_cli(tiny_llama, "-m", "dynamic", "-s", "2", "--to", "gguf", "--out", tmp_path / "d.gguf", "-q", "--static")
    assert proc.returncode == 0, proc.stderr
    assert "dynamic NTK baked at 512 tokens" in proc.stdout
    rope = read_rope(GGUFReader(tmp_path / "d.gguf"))
    assert rope.scaling_type == "none" and rope.freq_base == pytest.approx(10000 * 3 ** (16 / 14), rel=1e-6)


def test_existing_scaling_refused_unless_replaced(tiny_llama, tmp_path):
    spec = build_spec("linear", base_rope_from_config(read_config(tiny_llama)), factor=2.0)
    src, _ = write_gguf_export(tiny_llama, spec, tmp_path / "lin.gguf", outtype="f16", progress=False)
    out = tmp_path / "again.gguf"
    proc = run_cli(src, "-m", "yarn", "-s", "4", "--to", "gguf", "--out", out, "-q")
    assert_one_line_error(proc, "already carries", "--replace-scaling")
    only(tmp_path, "lin.gguf")
    proc = run_cli(src, "-m", "yarn", "-s", "4", "--to", "gguf", "--out", out, "-q", "--replace-scaling")
    assert proc.returncode == 0, proc.stderr
    rope = read_rope(GGUFReader(out))
    assert (rope.scaling_type, rope.scaling_factor, rope.original_context, rope.context_length) == ("yarn", 4.0, 256, 1024)


def test_outtype_errors(tiny_llama, tmp_path):
    proc = run_cli(tiny_llama, "-m", "yarn", "-s", "2", "--to", "gguf", "--out", tmp_path / "x.gguf", "--outtype", "q4_k", "-q")
    assert_one_line_error(proc, "unknown --outtype 'q4_k'", "f32, f16, bf16, q8_0")
    proc = run_cli("smollm2-135m", "-m", "yarn", "-s", "2", "--to", "gguf", "--out", tmp_path / "x.gguf", "--outtype", "f16", "-q")
    assert_one_line_error(proc, "--outtype does not apply to a GGUF source")
    only(tmp_path)
