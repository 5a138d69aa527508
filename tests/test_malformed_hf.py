"""Malformed HF-side inputs (issue 23): safetensors headers, indexes, configs, tokenizer configs, factor files, DPE
maps, manifests, FIFOs and directories named like files, pickle-only checkpoints. Each case must end in exit 2 and
one `error: <problem> — <fix>` line (no traceback), leave nothing at the output path and leave the source exactly
as it was (hashed before and after). The CLI runs in-process; the cases that could block run in a subprocess with
a timeout, so a regression fails instead of hanging the suite."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest

from helpers import leftovers, run_cli, tree_digest
from ropeconvert.cli import main

DEEP = "[" * 200_000 + "]" * 200_000  # far past the JSON parser's recursion limit
NESTED = "[" * 100 + "]" * 100  # parses, but deeper than any real file
GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


def run_main(args, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ropeconvert", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def refused(code: int, err: str, out: Path, source: Path, before: dict, needle: str, absent: tuple = ()) -> str:
    """The contract: exit 2, one line with the problem and a remedy, nothing at `out`, the source unchanged."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert " — " in lines[0], f"no remedy: {lines[0]}"
    for word in absent:
        assert word not in lines[0], (word, lines[0])
    assert not os.path.lexists(out) and not leftovers(out), (out, leftovers(out))
    assert tree_digest(source) == before, f"source {source} changed"
    return lines[0]


def st_bytes(header: dict | str, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def weights(header: dict | str, data: bytes = bytes(24)):
    return lambda d: (d / "model.safetensors").write_bytes(st_bytes(header, data))


def entry(**changes) -> dict:
    h = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        name, key = path.split("__")
        h[name][key] = value
    return h


def config(**changes):
    def damage(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return damage


def raw_config(text: str):
    def damage(d: Path):
        cfg = (d / "config.json").read_text().rstrip().rstrip("}")
        (d / "config.json").write_text(cfg + text + "}")
    return damage


def as_directory(name: str):
    def damage(d: Path):
        (d / name).unlink()
        (d / name).mkdir()
        (d / name / "x").write_text("x")
    return damage


def write(name: str, text: str):
    return lambda d: (d / name).write_text(text)


def pickles_only(suffix: str):
    return lambda d: (d / "model.safetensors").rename(d / f"pytorch_model{suffix}")


# (case id, damage to a copy of the tiny model, expected words, words the line must not hold)
HEADER_CASES = [
    ("dtype-list", weights(entry(a__dtype=["F32"])), "unknown dtype ['F32']", ()),
    ("dtype-number", weights(entry(a__dtype=5)), "unknown dtype 5", ()),
    ("shape-beyond-int64", weights(entry(a__shape=[2**64, 1])), "invalid shape [18446744073709551616, 1]", ()),
    ("shape-bool", weights(entry(a__shape=[True, 4])), "invalid shape [True, 4]", ()),
    ("shape-float", weights(entry(a__shape=[2.0, 2])), "invalid shape [2.0, 2]", ()),
    ("shape-string", weights(entry(a__shape="2,2")), "invalid shape '2,2'", ()),
    ("shape-rank-9", weights(entry(a__shape=[1] * 9)), "invalid shape", ()),
    # 2^32 × 2^32 wraps to 0 in int64: computed exactly, it needs 2^66 bytes, not the 0 the entry holds
    ("shape-2^32x2^32-no-bytes", weights({"a": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}, b""),
     "holds 0 bytes but F32[4294967296, 4294967296] needs 73786976294838206464", ()),
    ("shape-wraps-int64", weights({"a": {"dtype": "F32", "shape": [2**62 + 16, 4], "data_offsets": [0, 256]}}, bytes(256)),
     "holds 256 bytes but F32[4611686018427387920, 4] needs", ()),
    ("zero-size-tensor", weights(entry(b__shape=[0, 4], b__data_offsets=[16, 16]), bytes(16)), "zero-size shape [0, 4]", ()),
    ("offsets-object", weights(entry(a__data_offsets={"x": 0, "y": 16})), "malformed data_offsets", ()),
    ("offsets-bool", weights(entry(a__data_offsets=[False, 16])), "malformed data_offsets", ()),
    ("entry-not-object", weights({"a": 5}), "malformed header entry", ()),
    ("metadata-string", weights({**GOOD, "__metadata__": "pt"}), "__metadata__ must be an object of strings", ()),
    ("metadata-number-value", weights({**GOOD, "__metadata__": {"format": 1}}), "__metadata__['format'] must be a string, got 1", ()),
    ("metadata-nested-value", weights({**GOOD, "__metadata__": {"format": {"x": "y"}}}), "must be a string", ()),
    ("header-200k-deep", weights('{"a": ' + DEEP + "}"), "nested too deeply", ()),
    ("header-100-deep", weights('{"__metadata__": ' + NESTED + "}"), "nested more than 64 levels", ()),
    ("header-not-utf8", lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}"), "is not UTF-8", ()),
    ("name-with-newline", weights({"a\nb": {"dtype": "F13", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)), r"'a\nb'", ()),
    ("weights-is-directory", as_directory("model.safetensors"), "model.safetensors is a directory, not a file", ("not found",)),
    ("weights-pickle-bin", pickles_only(".bin"), "only has pickle weights (pytorch_model.bin)", ()),
    ("weights-pickle-pt", pickles_only(".pt"), "only has pickle weights (pytorch_model.pt)", ()),
]
JSON_CASES = [
    ("config-200k-deep", write("config.json", DEEP), "config.json is nested too deeply", ()),
    ("config-100-deep-value", raw_config(', "id2label": ' + NESTED), "nested more than 64 levels", ()),
    ("config-is-directory", as_directory("config.json"), "config.json is a directory, not a file", ("has no config.json",)),
    ("config-not-utf8", lambda d: (d / "config.json").write_bytes(b'{"a": "\xff"}'), "is not UTF-8", ()),
    # never echo a file that does not parse: it may be something else entirely (a key, a password file)
    ("config-secret-text", write("config.json", "SECRET-hunter2 not json\n"), "config.json is not valid JSON", ("SECRET", "hunter2")),
    ("tokenizer-config-200k-deep", write("tokenizer_config.json", DEEP), "tokenizer_config.json is nested too deeply", ()),
]
CONFIG_CASES = [
    ("head-dim-text", config(head_dim="abc"), "head_dim must be a positive integer, got 'abc'", ()),
    ("head-dim-odd", config(head_dim=15), "gives 15 rotary dimensions, not an even number", ()),
    ("hidden-size-5000-digits", raw_config(', "hidden_size": ' + "7" * 5000), "more than 4300 digits", ("7777",)),
    ("hidden-size-4000-digits", raw_config(', "hidden_size": ' + "7" * 4000), "hidden_size must be a positive integer of at most 1048576, got an integer of 4000 digits", ("7777",)),
    ("hidden-size-bool", config(hidden_size=True), "hidden_size must be a positive integer, got True", ()),
    ("heads-bool", config(num_attention_heads=False), "num_attention_heads must be a positive integer, got False", ()),
    ("heads-zero", config(num_attention_heads=0), "num_attention_heads must be a positive integer", ("tokenizer",)),
    ("kv-heads-not-dividing", config(num_key_value_heads=3), "num_attention_heads 4 is not a multiple of num_key_value_heads 3", ("tokenizer",)),
    ("hidden-not-multiple-of-heads", config(head_dim=None, hidden_size=66), "hidden_size 66 is not a multiple of num_attention_heads 4", ()),
    ("max-positions-1e30", config(max_position_embeddings=1e30), "max_position_embeddings must be a positive integer, got 1e+30", ()),
    ("max-positions-huge-int", config(max_position_embeddings=2**40), "max_position_embeddings must be a positive integer of at most", ()),
    ("max-positions-float", config(max_position_embeddings=256.0), "max_position_embeddings must be a positive integer, got 256.0", ()),
    ("original-max-positions-text", config(original_max_position_embeddings="256"), "original_max_position_embeddings must be a positive integer, got '256'", ()),
    ("partial-rotary-text", config(partial_rotary_factor="0.5"), "partial_rotary_factor must be a number in (0, 1], got '0.5'", ()),
    ("partial-rotary-above-one", config(partial_rotary_factor=2), "partial_rotary_factor must be a number in (0, 1], got 2", ()),
    ("rope-theta-nan", raw_config(', "rope_theta": NaN'), "rope_theta must be a finite number > 1, got nan", ()),
    ("rope-theta-1e400", raw_config(', "rope_theta": 1e400'), "rope_theta must be a finite number > 1, got inf", ()),
    ("rope-theta-text", config(rope_theta="1e4"), "rope_theta must be a finite number > 1, got '1e4'", ()),
    ("rope-list", config(rope_parameters=None, rope_scaling=["yarn"]), "rope_scaling must be an object, got list", ()),
    ("rope-factor-text", config(rope_parameters=None, rope_scaling={"rope_type": "yarn", "factor": "2"}), "rope_scaling.factor must be a finite number > 0, got '2'", ()),
    ("rope-beta-fast-text", config(rope_parameters=None, rope_scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": "32"}), "rope_scaling.beta_fast must be a finite number > 0, got '32'", ()),
    ("rope-beta-slow-bool", config(rope_parameters=None, rope_scaling={"rope_type": "yarn", "factor": 2.0, "beta_slow": True}), "rope_scaling.beta_slow must be a finite number > 0, got True", ()),
    ("rope-attention-factor-nan", raw_config(', "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "attention_factor": NaN}'), "rope_scaling.attention_factor must be a finite number > 0, got nan", ()),
    ("rope-long-factor-text", config(rope_parameters=None, rope_scaling={"rope_type": "longrope", "long_factor": "1,1", "short_factor": [1.0] * 8}), "rope_scaling.long_factor must be a list of 1 to 65536 numbers, got '1,1'", ()),
    ("rope-short-factor-item", config(rope_parameters=None, rope_scaling={"rope_type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0, "x"]}), "rope_scaling.short_factor[1] must be a finite number > 0, got 'x'", ()),
    ("rope-type-newline", config(rope_parameters={"rope_type": "yarn\n", "factor": 2.0, "rope_theta": 10000.0}), r"rope_parameters.rope_type must be a rope type name such as 'yarn', got 'yarn\n'", ()),
    ("rope-parameters-theta-text", config(rope_parameters={"rope_type": "default", "rope_theta": "1e4"}), "rope_parameters.rope_theta must be a finite number > 1, got '1e4'", ()),
    ("rope-original-text", config(rope_parameters={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": "256"}), "rope_parameters.original_max_position_embeddings must be a positive integer", ()),
    ("model-type-list", config(model_type=["llama"]), "model_type must be a string such as 'llama', got ['llama']", ()),
]
GGUF_CONFIG_CASES = [
    ("gguf-vocab-missing", config(vocab_size=None), "lacks 'vocab_size', which a GGUF export needs", ("tokenizer",)),
    ("gguf-vocab-text", config(vocab_size="49152"), "vocab_size must be a positive integer, got '49152'", ("tokenizer",)),
    ("gguf-intermediate-missing", config(intermediate_size=None), "lacks 'intermediate_size', which a GGUF export needs", ()),
    ("gguf-intermediate-text", config(intermediate_size="96"), "intermediate_size must be a positive integer, got '96'", ()),
    ("gguf-layers-missing", config(num_hidden_layers=None), "lacks 'num_hidden_layers', which a GGUF export needs", ()),
    ("gguf-layers-text", config(num_hidden_layers="2"), "num_hidden_layers must be a positive integer, got '2'", ()),
    ("gguf-heads-zero", config(num_attention_heads=0), "num_attention_heads must be a positive integer", ("tokenizer",)),
    ("gguf-shape-wraps-int64", weights({"a": {"dtype": "F32", "shape": [2**62 + 16, 4], "data_offsets": [0, 256]}}, bytes(256)), "holds 256 bytes but F32", ()),
    ("gguf-zero-size-tensor", weights(entry(b__shape=[4, 0], b__data_offsets=[16, 16]), bytes(16)), "zero-size shape [4, 0]", ()),
]


@pytest.fixture
def model(tiny_llama, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    return copy


def cases(*tables):
    return [pytest.param(*row, id=row[0]) for table in tables for row in table]


@pytest.mark.parametrize("case,damage,needle,absent", cases(HEADER_CASES, JSON_CASES, CONFIG_CASES))
def test_hf_export_refuses(case, damage, needle, absent, model, tmp_path, capsys, monkeypatch):
    damage(model)
    before, out = tree_digest(model), tmp_path / "out"
    code, err = run_main([model, "-m", "yarn", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, model, before, needle, absent)


@pytest.mark.parametrize("case,damage,needle,absent", cases(GGUF_CONFIG_CASES))
def test_gguf_export_refuses(case, damage, needle, absent, model, tmp_path, capsys, monkeypatch):
    damage(model)
    before, out = tree_digest(model), tmp_path / "out.gguf"
    code, err = run_main([model, "-m", "linear", "-s", "2", "--to", "gguf", "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, model, before, needle, absent)


def _index(d: Path, **changes) -> None:
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    for key, value in changes.items():
        if key == "first_shard":
            idx["weight_map"][next(iter(idx["weight_map"]))] = value
        else:
            idx[key] = value
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


SHARD_CASES = [
    ("index-200k-deep", lambda d: (d / "model.safetensors.index.json").write_text(DEEP), "index.json is nested too deeply"),
    ("index-weight-map-list", lambda d: _index(d, weight_map=["a.safetensors"]), "needs a non-empty 'weight_map' object"),
    ("index-shard-number", lambda d: _index(d, first_shard=5), "weight_map value 5 is not a shard file name"),
    ("index-shard-name-too-long", lambda d: _index(d, first_shard="x" * 300 + ".safetensors"), "is 312 bytes, longer than a file name can be"),
    ("index-names-pickle-shard", lambda d: _index(d, first_shard="pytorch_model-00001-of-00002.bin"), "is not a .safetensors file"),
    ("index-is-directory", as_directory("model.safetensors.index.json"), "index.json is a directory, not a file"),
    ("shard-is-directory", lambda d: as_directory(next(d.glob("model-00001-*")).name)(d), "is a directory, not a file"),
]


@pytest.mark.parametrize("case,damage,needle", cases(SHARD_CASES))
def test_sharded_checkpoint_refuses(case, damage, needle, tiny_llama_sharded, tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_sharded, model)
    damage(model)
    before, out = tree_digest(model), tmp_path / "out"
    code, err = run_main([model, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, model, before, needle)


F8 = [1.0 + 0.25 * i for i in range(8)]  # the tiny model has 8 frequency pairs
FACTOR_CASES = [
    ("json-1e400", "[" + ", ".join(["1.0"] * 7 + ["1e400"]) + "]", "factors[7] = inf"),
    ("json-nan", "[" + ", ".join(["1.0"] * 7 + ["NaN"]) + "]", "factors[7] = nan"),
    ("json-string-factor", json.dumps({"long_factor": F8[:7] + ["2.0"]}), "long_factor[7] = '2.0' is not a number"),
    ("json-string-original", json.dumps({"long_factor": F8, "original_context": "256"}), "original_context must be a positive integer, got '256'"),
    ("json-1e400-target", '{"long_factor": [1, 1, 1, 1, 1, 1, 1, 1], "target_context": 1e400}', "target_context must be a positive integer, got inf"),
    ("json-nan-original", '{"long_factor": [1, 1, 1, 1, 1, 1, 1, 1], "original_context": NaN}', "original_context must be a positive integer, got nan"),
    ("json-bool-target", json.dumps({"long_factor": F8, "target_context": True}), "target_context must be a positive integer, got True"),
    ("phi3-string-original", json.dumps({"max_position_embeddings": 1024, "original_max_position_embeddings": "256",
                                         "rope_scaling": {"type": "longrope", "long_factor": F8, "short_factor": [1.0] * 8}}),
     "original_max_position_embeddings must be a positive integer, got '256'"),
    ("phi3-1e400-target", '{"max_position_embeddings": 1e400, "rope_scaling": {"type": "longrope", "long_factor": '
                          '[1, 1, 1, 1, 1, 1, 1, 1]}}', "max_position_embeddings must be a positive integer, got inf"),
    ("json-200k-deep", DEEP, "is nested too deeply"),
    ("json-100-deep", '{"long_factor": ' + NESTED + "}", "nested more than 64 levels"),
    # Python's float() reads "1_0" as 10.0; a factor file means plain decimals
    ("csv-underscore", "\n".join(["1.0"] * 7 + ["1_0"]), "line 8 is not a list of numbers"),
    ("csv-hex", "\n".join(["1.0"] * 7 + ["0x10"]), "line 8 is not a list of numbers"),
    ("csv-secret", "root:x:0:0:root:/root:/bin/bash\n", "line 1 is not a list of numbers"),
]


@pytest.mark.parametrize("case,text,needle", cases(FACTOR_CASES))
def test_bad_factor_file(case, text, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    f = tmp_path / "factors.txt"
    f.write_text(text)
    before, out = tree_digest(tiny_llama), tmp_path / "out"
    code, err = run_main([tiny_llama, "-m", "longrope", "--factors", f, "-s", "4", "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, tiny_llama, before, needle, ("root:x", "1_0", "0x10"))


def test_factor_paths_name_what_they_are(tiny_llama, tmp_path, capsys, monkeypatch):
    before = tree_digest(tiny_llama)
    folder = tmp_path / "factors.csv"
    folder.mkdir()
    for given, needle, absent in ((folder, "factor file", "not found"), (tmp_path / "nope.csv", "not found", "directory")):
        out = tmp_path / "out"
        code, err = run_main([tiny_llama, "-m", "longrope", "--factors", given, "-s", "4", "-o", out, "-q"], capsys, monkeypatch)
        line = refused(code, err, out, tiny_llama, before, needle, (absent,))
        assert given != folder or "is a directory, not a file" in line


def test_underscore_factor_is_not_ten(tmp_path):
    from ropeconvert.convert.factor_files import load_factor_file, parse_number
    from ropeconvert.errors import InputError

    assert [parse_number(t) for t in ("1", "-2.5", ".5", "1e3", "1.E-2", "+3")] == [1.0, -2.5, 0.5, 1000.0, 0.01, 3.0]
    assert [parse_number(t) for t in ("1_0", "0x10", "1,0", "½", "1e", "")] == [None] * 6
    (tmp_path / "f.csv").write_text("1_0,2\n")
    with pytest.raises(InputError, match="line 1 is not a list of numbers"):
        load_factor_file(tmp_path / "f.csv")


def _dpe_map(**changes) -> str:
    m = {"format": "ropeconvert.dpe_map/1", "target_context": 1024,
         "position_map": {"window": 32, "boundaries": [0, 4, 8], "scales": [2.0, 4.0], "original_context": 256,
                          "shape": None, "selected": None}}
    for key, value in changes.items():
        (m["position_map"] if key in m["position_map"] else m)[key] = value
    return json.dumps(m)


DPE_MAP_CASES = [
    ("map-200k-deep", DEEP, "is nested too deeply"),
    ("map-target-text", _dpe_map(target_context="1024"), "target_context must be a positive integer, got '1024'"),
    ("map-target-1e400", _dpe_map(target_context=None).replace("null", "1e400", 1), "target_context must be a positive integer, got inf"),
    ("map-window-text", _dpe_map(window="32"), "position_map.window must be a positive integer, got '32'"),
    ("map-boundaries-number", _dpe_map(boundaries=8), "position_map.boundaries must be a list of integers, got 8"),
    ("map-scales-text", _dpe_map(scales=["2", "4"]), "position_map.scales must be a list of numbers"),
    ("map-not-a-map", json.dumps({"format": "other"}), "is not a ropeconvert.dpe_map/1 file"),
]


@pytest.mark.parametrize("case,text,needle", cases(DPE_MAP_CASES))
def test_bad_dpe_map(case, text, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    f = tmp_path / "dpe_map.json"
    f.write_text(text)
    before, out = tree_digest(tiny_llama), tmp_path / "out"
    code, err = run_main([tiny_llama, "-m", "dpe", "--dpe-map", f, "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, tiny_llama, before, needle)


def test_dpe_scales_are_plain_numbers(tiny_llama, tmp_path, capsys, monkeypatch):
    before, out = tree_digest(tiny_llama), tmp_path / "out"
    code, err = run_main([tiny_llama, "-m", "dpe", "--scales", "2,1_0", "-s", "4", "-o", out, "-q"], capsys, monkeypatch)
    refused(code, err, out, tiny_llama, before, "--scales '2,1_0' is not a comma-separated list of numbers")


def test_a_read_failure_is_not_called_a_write_failure(model, tmp_path, capsys, monkeypatch):
    """The weights become unreadable after their header was checked (as root, chmod cannot show this: the denial is
    simulated at os.open). The copy must report a read failure of the source, not "cannot write"."""
    real_open, opened = os.open, []

    def deny(path, flags, *args, **kwargs):
        if str(path).endswith("model.safetensors") and not flags & (os.O_WRONLY | os.O_RDWR):
            opened.append(path)
            if len(opened) > 1:  # the header read passes, every later read is refused
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    before, out = tree_digest(model), tmp_path / "out"
    monkeypatch.setattr(os, "open", deny)
    code, err = run_main([model, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    monkeypatch.setattr(os, "open", real_open)
    refused(code, err, out, model, before, "cannot read", ("cannot write",))
    assert len(opened) > 1


def test_unreadable_files(model, tmp_path, capsys, monkeypatch):
    """An unreadable config or weights file is "permission denied". The tests run as root, where chmod 000 does not
    stop a read, so the denial is made at os.open, where the kernel would make it."""
    before, real_open = tree_digest(model), os.open
    for name in ("config.json", "model.safetensors"):
        def deny(path, flags, *args, _name=name, **kwargs):
            if str(path).endswith(_name) and not flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        out = tmp_path / "out"
        monkeypatch.setattr(os, "open", deny)
        try:
            code, err = run_main([model, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
        finally:
            monkeypatch.setattr(os, "open", real_open)
        refused(code, err, out, model, before, "permission denied", ("cannot write", "not found"))


HANG_CASES = [  # each would block forever in open() before issue 23
    ("weights-fifo", "model.safetensors", [], "model.safetensors is not a regular file"),
    ("config-fifo", "config.json", [], "config.json is not a regular file"),
    ("tokenizer-config-fifo", "tokenizer_config.json", [], "tokenizer_config.json is not a regular file"),
    ("factor-file-fifo", None, ["-m", "longrope", "--factors", "FIFO", "-s", "4"], "is not a regular file"),
]


@pytest.mark.parametrize("case,name,args,needle", cases(HANG_CASES))
def test_fifo_never_blocks(case, name, args, needle, model, tmp_path):
    if name is None:
        fifo = tmp_path / "factors.csv"
        args = [str(fifo) if a == "FIFO" else a for a in args]
    else:
        fifo = model / name
        fifo.unlink()
    os.mkfifo(fifo)
    before, out = tree_digest(model), tmp_path / "out"
    proc = run_cli(model, *(args or ["-m", "yarn", "-s", "2"]), "-o", out, "-q", timeout=120)
    refused(proc.returncode, proc.stderr, out, model, before, needle)


def _export(tiny_llama: Path, tmp_path: Path, capsys, monkeypatch) -> Path:
    out = tmp_path / "export"
    code, err = run_main([tiny_llama, "-m", "linear", "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
    assert code == 0, err
    return out


def _no_unpickling(monkeypatch):
    """Fail the test if anything reaches torch.load or transformers' loaders."""
    import torch
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle loader or from_pretrained was reached")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


def test_validate_refuses_pickle_weights_before_any_loader(tiny_llama, tmp_path, capsys, monkeypatch):
    export = _export(tiny_llama, tmp_path, capsys, monkeypatch)
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    pickles_only(".bin")(base)
    _no_unpickling(monkeypatch)
    for args, source in (([export, "--base", base], base), ([base, "--base", tiny_llama], base)):
        before = tree_digest(source)
        code, err = run_main(["validate", *args, "--lengths", "64", "--tasks", "ppl", "-q"], capsys, monkeypatch)
        refused(code, err, tmp_path / "never-written", source, before, "only has pickle weights (pytorch_model.bin)")
        assert not (export / "report.json").exists()
    pickles_only(".pt")(export)
    before = tree_digest(export)
    code, err = run_main(["validate", export, "--base", tiny_llama, "--tasks", "ppl", "-q"], capsys, monkeypatch)
    refused(code, err, tmp_path / "never-written", export, before, "only has pickle weights (pytorch_model.pt)")


def test_search_refuses_pickle_weights_before_writing(tiny_llama, tmp_path, capsys, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    pickles_only(".bin")(base)
    _no_unpickling(monkeypatch)
    before = tree_digest(base)
    for method in ("longrope", "dpe"):
        out = tmp_path / f"search-{method}"
        code, err = run_main(["search", base, "-m", method, "-s", "2", "-o", out, "-q"], capsys, monkeypatch)
        refused(code, err, out, base, before, "only has pickle weights")


def test_runtime_loader_checks_before_from_pretrained(tiny_llama, tmp_path, monkeypatch):
    """The one loader every validator and search uses: a pickle-only directory never reaches transformers."""
    from ropeconvert.errors import InputError
    from ropeconvert.validators.runtime import load

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    pickles_only(".bin")(base)
    _no_unpickling(monkeypatch)
    with pytest.raises(InputError, match="only has pickle weights"):
        load(base)


MANIFEST_CASES = [
    ("manifest-200k-deep", lambda p: p.write_text(DEEP), "is nested too deeply"),
    ("manifest-entry-list", lambda p: p.write_text(json.dumps({"files": {"config.json": [1, 2]}})), "files['config.json'] must be"),
    ("manifest-size-text", lambda p: p.write_text(json.dumps({"files": {"config.json": {"size": "9", "sha256": None}}})), "must be {size: integer"),
    ("manifest-weights-text", lambda p: p.write_text(json.dumps({"files": {}, "weights": "model.safetensors"})), "weights must be a list of file names"),
    ("manifest-is-directory", lambda p: (p.unlink(), p.mkdir()), "ropeconvert.json is a directory, not a file"),
]


@pytest.mark.parametrize("case,damage,needle", cases(MANIFEST_CASES))
def test_verify_refuses_damaged_manifest(case, damage, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    export = _export(tiny_llama, tmp_path, capsys, monkeypatch)
    damage(export / "ropeconvert.json")
    before = tree_digest(export)
    code, err = run_main(["verify", export], capsys, monkeypatch)
    refused(code, err, tmp_path / "never-written", export, before, needle)


def test_config_check_unit():
    """The validating layer on its own: the first bad field, named, with a short repr of its value."""
    from ropeconvert.errors import InputError
    from ropeconvert.formats.config_check import check_config, require, show

    ok = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": None,
          "head_dim": None, "rope_scaling": None, "rope_theta": 1e4, "max_position_embeddings": 4096}
    assert check_config(ok) is ok  # null fields are absent fields, as transformers reads them
    with pytest.raises(InputError, match="x.json lacks 'vocab_size', which a GGUF export needs"):
        require(ok, ("hidden_size", "vocab_size"), "x.json", "a GGUF export")
    assert show("a\nb") == r"'a\nb'" and show(10**50) == "an integer of 51 digits"
    assert show("x" * 100).endswith("… (102 characters)") and len(show("x" * 100)) < 70
    with pytest.raises(InputError) as e:
        check_config({**ok, "head_dim": "x" * 10_000})
    assert len(e.value.one_line()) < 300  # never the whole value
    with pytest.raises(InputError, match="must hold a JSON object, got list"):
        check_config([1])


PUBLISH_CASES = [  # what `publish` reads from an export before anything is uploaded
    ("report-200k-deep", "report.json", DEEP, "report.json is nested too deeply"),
    ("report-plots-list", "report.json", json.dumps({"schema": "ropeconvert.report/1", "passed": True, "plots": ["a.png"]}),
     "plots must be an object, got ['a.png']"),
    ("report-checks-strings", "report.json", json.dumps({"schema": "ropeconvert.report/1", "passed": False, "checks": ["ppl"]}),
     "every entry of checks must be an object"),
    ("manifest-spec-list", "ropeconvert.json", json.dumps({"spec": [1, 2]}), "spec must be an object, got [1, 2]"),
    ("config-200k-deep", "config.json", DEEP, "config.json is nested too deeply"),
]


@pytest.mark.parametrize("case,name,text,needle", cases(PUBLISH_CASES))
def test_publish_reads_exports_safely(case, name, text, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    from ropeconvert.errors import InputError
    from ropeconvert.formats.hub_export import load_export

    export = _export(tiny_llama, tmp_path, capsys, monkeypatch)
    (export / name).write_text(text)
    with pytest.raises(InputError) as e:
        load_export(export)
    assert needle in e.value.one_line() and e.value.fix


def test_loader_json_is_checked_before_transformers_parses_it(model):
    from ropeconvert.errors import InputError
    from ropeconvert.formats.tensors import require_safetensors

    assert require_safetensors(model) is not None and require_safetensors(model / "config.json") is None
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        saved = (model / name).read_bytes() if (model / name).exists() else None
        (model / name).write_text(DEEP)
        with pytest.raises(InputError, match=f"{name} is nested too deeply"):
            require_safetensors(model)
        (model / name).write_bytes(saved) if saved is not None else (model / name).unlink()
