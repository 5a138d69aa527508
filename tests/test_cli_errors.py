"""Bad input: one line naming the problem and the fix, exit code 2, nothing at the output path."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import assert_one_line_error, run_cli


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], list(out.parent.iterdir())


@pytest.fixture
def broken_model(tiny_llama, tmp_path):
    """A copy of the tiny model whose config.json the test edits."""
    def make(edit):
        d = tmp_path / "model"
        shutil.copytree(tiny_llama, d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        return d
    return make


def test_unknown_method_suggests(tiny_llama, tmp_path):
    out = tmp_path / "o"
    proc = run_cli(tiny_llama, "--method", "yarm", "--factor", "2", "--out", out)
    assert_one_line_error(proc, "unknown method 'yarm'", "did you mean 'yarn'", "choose one of")
    assert_nothing_written(out)


def test_unknown_alias_suggests(tmp_path):
    proc = run_cli("mistral7b", "--method", "yarn", "--factor", "2", "--out", tmp_path / "o")
    assert_one_line_error(proc, "unknown model 'mistral7b'", "did you mean 'mistral-7b'")


def test_wrong_factor_length(tiny_llama, tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("\n".join(["1.0"] * 7))  # the tiny model has 8 pairs
    out = tmp_path / "o"
    proc = run_cli(tiny_llama, "-m", "longrope", "--factors", f, "-s", "4", "-o", out)
    assert_one_line_error(proc, "factors has 7 values but the model has 8 frequency pairs", "give exactly 8")
    assert_nothing_written(out)


@pytest.mark.parametrize("value,needle", [("nan", "factors[7] = nan"), ("-1.5", "factors[7] = -1.5")])
def test_nan_and_negative_factors(tiny_llama, tmp_path, value, needle):
    f = tmp_path / "f.csv"
    f.write_text("\n".join(["1.0"] * 7 + [value]))
    out = tmp_path / "o"
    assert_one_line_error(run_cli(tiny_llama, "-m", "longrope", "--factors", f, "-s", "4", "-o", out), needle)
    assert_nothing_written(out)


def test_target_not_above_original(tiny_llama, tmp_path):
    out = tmp_path / "o"
    proc = run_cli(tiny_llama, "-m", "yarn", "--target-context", "256", "-o", out)
    assert_one_line_error(proc, "target context 256 must be larger than the original context 256")
    assert_nothing_written(out)


@pytest.mark.parametrize("key", ["hidden_size", "num_attention_heads", "max_position_embeddings"])
def test_missing_config_keys(broken_model, tmp_path, key):
    model = broken_model(lambda c: c.pop(key))
    out = tmp_path / "o"
    assert_one_line_error(run_cli(model, "-m", "linear", "-s", "2", "-o", out), f"config.json lacks '{key}'")
    assert_nothing_written(out)


def test_unsupported_architecture(broken_model, tmp_path):
    model = broken_model(lambda c: c.update(model_type="gpt2"))
    out = tmp_path / "o"
    assert_one_line_error(run_cli(model, "-m", "linear", "-s", "2", "-o", out),
                          "unsupported architecture model_type='gpt2'", "supported: llama")
    assert_nothing_written(out)


def test_existing_scaling_refused_then_replaced(broken_model, tmp_path):
    model = broken_model(lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    out = tmp_path / "o"
    assert_one_line_error(run_cli(model, "-m", "yarn", "-s", "2", "-o", out), "already carries linear rope scaling",
                          "--replace-scaling")
    assert_nothing_written(out)
    assert run_cli(model, "-m", "yarn", "-s", "2", "-o", out, "--replace-scaling", "-q").returncode == 0


def test_output_exists(tiny_llama, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli(tiny_llama, "-m", "linear", "-s", "2", "-o", out), "already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_output_parent_not_a_directory(tiny_llama, tmp_path):
    (tmp_path / "no").write_text("a file")  # a missing parent is made (as mkdir -p); a file in the way cannot be
    out = tmp_path / "no" / "such" / "dir"
    assert_one_line_error(run_cli(tiny_llama, "-m", "linear", "-s", "2", "-o", out),
                          "does not exist and cannot be created")


def test_pickle_weights_refused(broken_model, tmp_path):
    model = broken_model(lambda c: None)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    assert_one_line_error(run_cli(model, "-m", "linear", "-s", "2", "-o", tmp_path / "o"),
                          "only has pickle weights", "never unpickles")


def test_usage_errors_are_one_line(tiny_llama, tmp_path):
    assert_one_line_error(run_cli(tiny_llama, "-m", "linear", "--fcator", "2"), "No such option")
    assert_one_line_error(run_cli(tiny_llama, "-m", "linear", "--factor", "abc"), "Invalid value for '--factor'")
    assert_one_line_error(run_cli(tiny_llama, "-m", "linear", "-s", "2", "--beta-fast", "3"),
                          "--beta-fast does not apply to method 'linear'")


def test_help_and_methods():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "convert" in proc.stdout and "inspect" in proc.stdout
    proc = run_cli("methods")
    assert proc.returncode == 0
    for name in ("linear", "ntk", "dynamic", "yarn", "longrope", "llama3", "arxiv.org/abs/2309.00071"):
        assert name in proc.stdout
