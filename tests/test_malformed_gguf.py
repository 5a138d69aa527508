"""Malformed GGUF-side and validate inputs (issue 23, beside tests/test_malformed_inputs.py): each ends in exit 2 and
one `error:` line with a remedy, no traceback, nothing at the output path, no temporary files, the source unchanged.
Also: verify covers every header byte, a re-extension checks its source's seal, and a full disk while writing a
search checkpoint, a validation report or the dequantized cache is one line with nothing half-written left.

Most cases run the CLI in-process (run_main); the few that would hang before the fix run in a subprocess with a
timeout."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from helpers import assert_clean_refusal, leftovers, run_cli, tree_digest
from test_malformed_inputs import run_main

from ropeconvert.errors import InputError, OutputError

# ---- a tiny unsealed llama GGUF, written with gguf's own writer, then damaged byte by byte -----------------------
HPARAMS = {"block_count": 1, "context_length": 256, "embedding_length": 32, "feed_forward_length": 64,
           "attention.head_count": 2, "attention.head_count_kv": 2, "rope.freq_base": 10000.0,
           "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": 8}
DROP = object()


def tiny_gguf(path: Path, qtype=None, **changes) -> Path:
    """A minimal llama GGUF the pipeline re-extends; `changes` replace (or with DROP remove) `llama.*` keys."""
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {**HPARAMS, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
        if value is DROP:
            continue
        add = {str: w.add_string, float: w.add_float32, int: w.add_uint32}[type(value)]
        add(f"llama.{key}", value)
    w.add_token_list([f"qqtok{i}" for i in range(8)])
    w.add_token_types([1] * 8)
    w.add_tensor("token_embd.weight", np.ones((8, 32), dtype=np.float32))
    if qtype is None:
        w.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), dtype=np.float32))
    else:
        w.add_tensor("blk.0.attn_q.weight", np.zeros((32, 34), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def after(data: bytes, name: bytes) -> int:
    """Offset just past a key's or tensor's name (its u64 length + bytes)."""
    at = data.find(struct.pack("<Q", len(name)) + name)
    assert at >= 0, name
    return at + 8 + len(name)


def patch(path: Path, at: int, fmt: str, *values) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, *values)
    path.write_bytes(bytes(data))


def token_type_count(p: Path):  # tokenizer.ggml.token_type: type ARRAY (u32), sub-type (u32), count (u64)
    patch(p, after(p.read_bytes(), b"tokenizer.ggml.token_type") + 8, "<Q", 2**40)


def string_length(p: Path):  # general.architecture's value: type STRING (u32), length (u64)
    patch(p, after(p.read_bytes(), b"general.architecture") + 4, "<Q", 2**50)


def token_string_length(p: Path):  # the third token of tokenizer.ggml.tokens
    patch(p, after(p.read_bytes(), b"tokenizer.ggml.tokens") + 16 + 2 * 14, "<Q", 2**61)


def shape_wraps(p: Path):  # token_embd.weight: n_dims (u32), dims (u64 each): [4, 2^62 + 16] wraps int64
    patch(p, after(p.read_bytes(), b"token_embd.weight") + 4, "<QQ", 4, 2**62 + 16)


def renamed_key(p: Path, old: bytes, new: bytes):
    assert len(old) == len(new)
    p.write_bytes(p.read_bytes().replace(struct.pack("<Q", len(old)) + old, struct.pack("<Q", len(new)) + new, 1))


GGUF_HEADER_CASES = [  # (case, damage, words in the one line)
    ("array-count-2^40", token_type_count, "claims 1099511627776 entries, more than the"),
    ("string-length-2^50", string_length, "runs past the end of the file"),
    ("token-length-2^61", token_string_length, "runs past the end of the file"),
    ("kv-count-huge", lambda p: patch(p, 16, "<Q", 2**60), "the metadata key count claims"),
    ("tensor-count-huge", lambda p: patch(p, 8, "<Q", 2**33), "the tensor count claims"),
    ("version-7", lambda p: patch(p, 4, "<I", 7), "its version field says 7"),
    ("shape-wraps-int64", shape_wraps, "runs past the end of the file"),
    ("too-many-dims", lambda p: patch(p, after(p.read_bytes(), b"token_embd.weight"), "<I", 9), "at most 4"),
    ("unknown-tensor-type", lambda p: patch(p, after(p.read_bytes(), b"token_embd.weight") + 4 + 16, "<I", 99),
     "unknown tensor type 99"),
    ("unknown-value-type", lambda p: patch(p, after(p.read_bytes(), b"llama.block_count"), "<I", 77),
     "unknown value type 77"),
    ("array-of-arrays", lambda p: patch(p, after(p.read_bytes(), b"tokenizer.ggml.token_type") + 4, "<I", 9),
     "is an array of arrays"),
    ("duplicate-key", lambda p: renamed_key(p, b"llama.rope.freq_base", b"llama.context_length"), "appears twice"),
    ("key-not-utf8", lambda p: renamed_key(p, b"llama.vocab_size", b"llama.vocab_siz\xff"), "is not UTF-8"),
    ("truncated-in-tensor-infos", lambda p: p.write_bytes(p.read_bytes()[:after(p.read_bytes(), b"token_embd.weight")]),
     "runs past the end of the file"),
    ("truncated-data", lambda p: p.write_bytes(p.read_bytes()[:-64]), "runs past the end of the file"),
    ("shorter-than-a-header", lambda p: p.write_bytes(p.read_bytes()[:20]), "shorter than a GGUF header"),
]
GGUF_METADATA_CASES = [  # (case, changes to the llama.* keys, words in the one line)
    ("head-count-text", {"attention__head_count": "two"}, "llama.attention.head_count must be an integer"),
    ("head-count-zero", {"attention__head_count": 0}, "llama.attention.head_count must be an integer from 1"),
    ("kv-heads-not-dividing", {"attention__head_count": 4, "attention__head_count_kv": 3}, "is not a multiple of"),
    ("no-block-count", {"block_count": DROP}, "GGUF lacks llama.block_count"),
    ("no-context-length", {"context_length": DROP}, "GGUF lacks llama.context_length"),
    ("vocab-size-text", {"vocab_size": "8"}, "llama.vocab_size must be an integer"),
    ("eps-nan", {"attention__layer_norm_rms_epsilon": float("nan")}, "must be a finite number > 0"),
    ("rope-dims-odd", {"rope__dimension_count": 5}, "must be even"),
]


def _refused(args, capsys, monkeypatch, out: Path, source: Path, *needles) -> str:
    before = tree_digest(source)
    code, err = run_main(args, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert " — " in lines[0], lines[0]  # a remedy follows the problem
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() and not leftovers(out), leftovers(out)
    assert tree_digest(source) == before
    return lines[0]


def test_the_undamaged_tiny_gguf_re_extends(tmp_path, capsys, monkeypatch):
    src = tiny_gguf(tmp_path / "ok.gguf")
    code, err = run_main([src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", tmp_path / "out.gguf", "-q"], capsys, monkeypatch)
    assert code == 0, err
    assert run_main(["verify", tmp_path / "out.gguf"], capsys, monkeypatch)[0] == 0


@pytest.mark.parametrize("case,damage,needle", GGUF_HEADER_CASES, ids=[c[0] for c in GGUF_HEADER_CASES])
def test_damaged_gguf_header(case, damage, needle, tmp_path, capsys, monkeypatch):
    src = tiny_gguf(tmp_path / "src.gguf")
    damage(src)
    out = tmp_path / "out.gguf"
    line = _refused([src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", out, "-q"], capsys, monkeypatch, out, src,
                    needle)
    assert "qqtok" not in line and "\\x" not in line  # nothing of the file's text is quoted
    code, err = run_main(["inspect", src], capsys, monkeypatch)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("case,changes,needle", GGUF_METADATA_CASES, ids=[c[0] for c in GGUF_METADATA_CASES])
def test_bad_gguf_hyperparameters(case, changes, needle, tmp_path, capsys, monkeypatch):
    src = tiny_gguf(tmp_path / "src.gguf", **changes)
    for to, out in (("gguf", tmp_path / "out.gguf"), ("hf", tmp_path / "out")):
        _refused([src, "-m", "yarn", "-s", "2", "--to", to, "-o", out, "-q"], capsys, monkeypatch, out, src, needle)


def test_q8_0_rows_not_in_whole_blocks(tmp_path, capsys, monkeypatch):
    src = tiny_gguf(tmp_path / "q.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    patch(src, after(src.read_bytes(), b"blk.0.attn_q.weight") + 4, "<Q", 33)  # 33 values a row: not 32-blocks
    out = tmp_path / "out.gguf"
    _refused([src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", out, "-q"], capsys, monkeypatch, out, src,
             "rows of 33 values do not split into Q8_0 blocks of 32")


def test_hang_cases_end_quickly(tmp_path):
    """Before the header walk these took ~60 s and ended in MemoryError (the reader loops over 2^40 entries), or
    blocked forever (a FIFO named like a model): here each is one line well inside the timeout."""
    bomb = tiny_gguf(tmp_path / "bomb.gguf")
    token_type_count(bomb)
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    for src, needle in ((bomb, "claims 1099511627776 entries"), (fifo, "not a regular file")):
        out = tmp_path / f"out-{src.stem}.gguf"
        proc = run_cli(src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", out, "-q", timeout=90)
        assert_clean_refusal(proc, out, None, None, needle)


# ---- HF → GGUF: shapes the stream cannot convert, config fields the header needs ---------------------------------
def _rewrite_weights(model: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(model: Path, **changes) -> None:
    cfg = json.loads((model / "config.json").read_text())
    for k, v in changes.items():
        cfg.pop(k) if v is DROP else cfg.__setitem__(k, v)
    (model / "config.json").write_text(json.dumps(cfg))


HF_TO_GGUF_CASES = [
    ("zero-size-tensor", lambda m: _rewrite_weights(m, lambda t: t.__setitem__(
        "model.layers.0.mlp.gate_proj.weight", np.zeros((0, 64), np.float32))), "'model.layers.0.mlp.gate_proj.weight' has"),
    ("q-rows-fewer-than-heads", lambda m: _rewrite_weights(m, lambda t: t.__setitem__(
        "model.layers.0.self_attn.q_proj.weight", np.zeros((2, 64), np.float32))), "do not split into 4 heads"),
    ("k-rows-odd-per-head", lambda m: _rewrite_weights(m, lambda t: t.__setitem__(
        "model.layers.1.self_attn.k_proj.weight", np.zeros((6, 64), np.float32))), "do not split into 2 heads"),
    ("no-vocab-size", lambda m: _edit_config(m, vocab_size=DROP), "lacks 'vocab_size'"),
    ("vocab-size-text", lambda m: _edit_config(m, vocab_size="49152"), "vocab_size must be a positive integer"),
    ("no-intermediate-size", lambda m: _edit_config(m, intermediate_size=DROP), "lacks 'intermediate_size'"),
    ("layers-text", lambda m: _edit_config(m, num_hidden_layers="2"), "num_hidden_layers must be a positive integer"),
    ("no-layers", lambda m: _edit_config(m, num_hidden_layers=DROP), "lacks 'num_hidden_layers'"),
    ("tokenizer-config-200k-deep", lambda m: (m / "tokenizer_config.json").write_text("[" * 200_000 + "]" * 200_000),
     "tokenizer config"),
    ("tokenizer-json-torn", lambda m: (m / "tokenizer.json").write_text('{"model": {"type": "BPE", "qqtok": 1'),
     "tokenizer.json is not valid JSON"),
]


@pytest.mark.parametrize("case,damage,needle", HF_TO_GGUF_CASES, ids=[c[0] for c in HF_TO_GGUF_CASES])
def test_hf_to_gguf_refusals(case, damage, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    damage(model)
    for to, out in (("gguf", tmp_path / "out.gguf"), ("both", tmp_path / "both")):
        _refused([model, "-m", "linear", "-s", "2", "--to", to, "-o", out, "-q"], capsys, monkeypatch, out, model,
                 needle)
        assert not Path(f"{out}.gguf").exists()


def test_stream_checks_a_wrapping_shape_against_the_bytes(tmp_path):
    """A header that lies ([2^62+16, 4] over 64 bytes) never reaches the row-block loop (~1.7e13 blocks)."""
    from ropeconvert.formats.gguf_stream import TensorPlan
    from ropeconvert.formats.tensors import TensorInfo

    info = TensorInfo("model.layers.0.mlp.up_proj.weight", "F32", (2**62 + 16, 4), tmp_path / "x.safetensors", 8, 72)
    with pytest.raises(InputError, match=r"holds 64 bytes but F32\[4611686018427387920, 4\] needs"):
        TensorPlan(info.name, "blk.0.ffn_up.weight", info.shape, gguf.GGMLQuantizationType.F16, info)
    empty = TensorInfo(info.name, "F32", (0, 64), info.file, 8, 8)  # what the safetensors check also refuses
    with pytest.raises(InputError, match=r"has shape \[0, 64\]; a GGUF export needs every dimension ≥ 1"):
        TensorPlan(info.name, "blk.0.ffn_up.weight", empty.shape, gguf.GGMLQuantizationType.F16, empty)


# ---- verify covers the whole header; re-extension checks its source's seal -----------------------------------------
@pytest.fixture(scope="module")
def sealed(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sealed") / "sealed.gguf"
    proc = run_cli(tiny_llama, "-m", "ntk", "-s", "2", "--to", "gguf", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def _flip(path: Path, at: int, mask: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


HEADER_EDITS = [  # (case, offset or function of the bytes) — every one of them before the seal's value
    ("magic", 0), ("version", 4), ("tensor-count", 8), ("kv-count", 16),
    ("architecture-value", lambda d: after(d, b"general.architecture") + 12),
    ("seal-key-name", lambda d: after(d, b"ropeconvert.sha256") - 1),
    ("kv-data", lambda d: after(d, b"llama.block_count") + 4),
    ("tensor-info", lambda d: after(d, b"token_embd.weight") + 4),
]


@pytest.mark.parametrize("case,where", HEADER_EDITS, ids=[c[0] for c in HEADER_EDITS])
def test_verify_sees_any_header_byte_change(case, where, sealed, tmp_path, capsys, monkeypatch):
    f = tmp_path / "e.gguf"
    shutil.copyfile(sealed, f)  # intact: test_integrity.py verifies such exports
    _flip(f, where if isinstance(where, int) else where(f.read_bytes()))
    code, err = run_main(["verify", f], capsys, monkeypatch)
    assert code == 2 and "verification failed" in err and len(err.strip().splitlines()) == 1, err
    assert "sha256 differs" in err or "no ropeconvert.sha256 seal" in err, err


def _legacy_sealed(path: Path) -> Path:
    """A GGUF sealed the way ropeconvert did before the whole-file seal: sha256 of the bytes after the value."""
    from ropeconvert.formats.gguf_integrity import PLACEHOLDER
    from ropeconvert.formats.gguf_keys import Keys

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string(Keys.LEGACY_SHA256, PLACEHOLDER)
    w.add_tensor("token_embd.weight", np.ones((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    at = after(bytes(data), Keys.LEGACY_SHA256.encode()) + 12
    data[at:at + 64] = hashlib.sha256(bytes(data[at + 64:])).hexdigest().encode()
    path.write_bytes(bytes(data))
    return path


def test_old_kind_of_seal_still_checked_and_named(tmp_path):
    from ropeconvert.formats.gguf_integrity import check_seal, verify_gguf

    f = _legacy_sealed(tmp_path / "old.gguf")
    assert check_seal(f) == (True, True)
    problems, done = verify_gguf(f)
    assert any("older ropeconvert" in d and "does not cover the magic, version" in d for d in done), done
    _flip(f, f.stat().st_size - 5)  # tensor data: covered by the old seal too
    assert check_seal(f) == (False, True)


def test_re_extension_refuses_a_source_whose_seal_fails(sealed, tmp_path, capsys, monkeypatch):
    src = tmp_path / "src.gguf"
    shutil.copyfile(sealed, src)
    _flip(src, src.stat().st_size - 7)  # one bit of the last tensor
    for to, out in (("gguf", tmp_path / "out.gguf"), ("both", tmp_path / "both")):
        _refused([src, "-m", "yarn", "-s", "2", "--to", to, "-o", out, "-q"], capsys, monkeypatch, out, src,
                 "no longer match its seal", "ropeconvert verify")
    shutil.copyfile(sealed, src)  # the intact source re-extends
    code, err = run_main([src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", tmp_path / "ok.gguf", "-q"], capsys, monkeypatch)
    assert code == 0, err


# ---- validate: lengths, metadata that lies about the context, unreadable previous reports -------------------------
@pytest.fixture(scope="module")
def hf_export(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("val") / "exp"
    proc = run_cli(tiny_llama, "-m", "yarn", "-s", "2", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def _validate_refused(export: Path, args, capsys, monkeypatch, *needles) -> None:
    before = tree_digest(export)
    code, err = run_main(["validate", export, "--base", export, *args, "-q"], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and " — " in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert tree_digest(export) == before  # no report, no plot, nothing half-written


@pytest.mark.parametrize("args,needle", [
    (["--lengths", "50000000"], "--lengths 50000000 is longer than the export's target context (512 tokens)"),
    (["--lengths", "256,1024"], "--lengths 1024 is longer than the export's target context"),
    (["--tasks", "passkey", "--passkey-lengths", "4k"], "--passkey-lengths 4096 is longer"),
    (["--tasks", "niah", "--niah-lengths", "600"], "--niah-lengths 600 is longer"),
], ids=["50M", "past-target", "passkey", "niah"])
def test_validate_lengths_past_the_target(args, needle, hf_export, capsys, monkeypatch):
    _validate_refused(hf_export, args, capsys, monkeypatch, needle)


def test_validate_lengths_past_the_text(hf_export, tmp_path, capsys, monkeypatch):
    text = tmp_path / "short.txt"
    text.write_text("A short story, far shorter than the window. " * 4)
    _validate_refused(hf_export, ["--tasks", "ppl", "--lengths", "400", "--text", text], capsys, monkeypatch,
                      "perplexity at 400 tokens needs a document of 399 tokens, and the short.txt corpus has none")
    _validate_refused(hf_export, ["--tasks", "niah", "--niah-lengths", "300", "--text", text], capsys, monkeypatch,
                      "a 300-token 4-needle prompt needs that much haystack")


def test_validate_refuses_hf_metadata_that_lies_about_the_context(hf_export, tmp_path, capsys, monkeypatch):
    export = tmp_path / "lie"
    shutil.copytree(hf_export, export)
    cfg = json.loads((export / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192
    (export / "config.json").write_text(json.dumps(cfg))
    _validate_refused(export, ["--tasks", "ppl"], capsys, monkeypatch,
                      "claims a context its ropeconvert spec does not", "max_position_embeddings is 8192, the spec says 512",
                      "ropeconvert verify")


def test_validate_refuses_gguf_metadata_that_lies_about_the_context(sealed, tmp_path, capsys, monkeypatch):
    f = tmp_path / "lie.gguf"
    shutil.copyfile(sealed, f)
    reader = gguf.GGUFReader(str(f), "r+")  # as gguf-set-metadata would
    reader.fields["llama.context_length"].parts[-1][0] = 4096
    del reader
    before = tree_digest(tmp_path)
    code, err = run_main(["validate", f, "--base", f, "--tasks", "ppl", "-q"], capsys, monkeypatch)
    assert code == 2 and "llama.context_length is 4096, the spec says 512" in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(tmp_path) == before and not (tmp_path / "lie.report").exists()


@pytest.mark.parametrize("content,needle", [
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ("{" + '"a": {' * 100 + "}" * 101, "nested more than"),
    ("{torn", "not valid JSON"),
], ids=["200k-deep", "100-deep", "torn"])
def test_validate_refuses_an_unreadable_previous_report_before_measuring(content, needle, hf_export, tmp_path,
                                                                          capsys, monkeypatch):
    export = tmp_path / "exp"
    shutil.copytree(hf_export, export)
    (export / "report.json").write_text(content)
    import ropeconvert.validators.validate as V

    monkeypatch.setattr(V, "open_runtime", lambda *a, **k: pytest.fail("measured before refusing the report"))
    _validate_refused(export, ["--tasks", "ppl"], capsys, monkeypatch, "previous validation report", needle,
                      "validate writes a new one")


# ---- disk full: search checkpoint, validation report, dequantize cache --------------------------------------------
def _enospc_after(n_bytes: int):
    """A write that puts `n_bytes` on disk and then fails as a full disk does."""
    def write(f, data):
        f.write(data[:n_bytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_disk_full_writing_a_search_checkpoint(tmp_path, monkeypatch):
    from ropeconvert.convert.search import checkpoint

    path = tmp_path / checkpoint.NAME
    checkpoint.write_json(path, {"old": True})
    before = tree_digest(tmp_path)
    monkeypatch.setattr(checkpoint.json, "dump", lambda data, f, **kw: _enospc_after(10)(f, json.dumps(data, **kw)))
    with pytest.raises(OutputError) as e:
        checkpoint.write_json(path, {"new": list(range(1000))})
    assert e.value.one_line().startswith(f"ran out of space writing {path} — free some space, then continue with "
                                         "--resume (the last complete checkpoint is kept)")
    assert tree_digest(tmp_path) == before  # the old checkpoint, and nothing else


def test_search_checkpoint_nested_200k_deep(tiny_llama, tmp_path, capsys, monkeypatch):
    out = tmp_path / "search"
    out.mkdir()
    (out / "checkpoint.json").write_text("[" * 200_000 + "]" * 200_000)
    before = tree_digest(out)
    code, err = run_main(["search", tiny_llama, "-m", "longrope", "-t", "512", "--out", out, "--resume", "-q"],
                         capsys, monkeypatch)
    assert code == 2 and "is corrupt (nested too deeply" in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(out) == before


def test_dpe_search_log_nested_deep(tmp_path):
    from ropeconvert.convert.search.dpe import _start_log

    path = tmp_path / "search_log.json"
    for content in ("[" * 200_000 + "]" * 200_000, "[]"):
        path.write_text(content)
        with pytest.raises(InputError, match="DPE search log .*(nested too deeply|corrupt)"):
            _start_log(path, {}, resume=True, force=False)


def _tiny_report(tmp_path: Path):
    from ropeconvert.validators import report as R

    tasks = {"ppl": {"lengths": [4, 8], "base": [10.0, 12.0], "extended": [10.5, 11.0],
                     "per_document": {"base": {"d": [10.0, 12.0]}, "extended": {"d": [10.5, 11.0]}}}}
    report = {"schema": R.SCHEMA_ID, "created": R.now(), "export": "e", "base": "b", "spec": None,
              "runtime": {"device": "cpu", "dtype": "float32", "torch": "x", "transformers": "y"},
              "corpus": {"name": "t", "documents": ["d"]}, "tasks": tasks, "checks": R.checks(tasks, 4)}
    return R, report, tasks


@pytest.mark.parametrize("fail_at", ["report.json", "report.md", "png"])
def test_disk_full_writing_a_validation_report(fail_at, tmp_path, monkeypatch):
    R, report, tasks = _tiny_report(tmp_path)
    out = tmp_path / "exp"
    R.write(report, out, R.figures(tasks, 4, 8))
    before = tree_digest(out)
    real_write = R._write_file
    if fail_at == "png":
        import matplotlib.figure

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                            lambda self, fname, **kw: _enospc_after(100)(open(fname, "wb"), b"\x89PNG" * 100))
    else:
        monkeypatch.setattr(R, "_write_file", lambda p, data: (_enospc_after(50)(open(p, "wb"), data)
                                                               if p.name.startswith(f".{fail_at}") else real_write(p, data)))
    with pytest.raises(OutputError) as e:
        R.write(report, out, R.figures(tasks, 4, 8))
    assert e.value.one_line().startswith(f"ran out of space writing the validation report in {out}")
    assert "free some space" in e.value.one_line()
    assert tree_digest(out) == before  # the previous report whole, no temporary file
    fresh = tmp_path / "fresh.report"  # a report directory made for this run goes again
    with pytest.raises(OutputError):
        R.write(report, fresh, R.figures(tasks, 4, 8))
    assert not fresh.exists()


@pytest.mark.parametrize("how", ["oserror", "safetensors"])
def test_disk_full_writing_the_dequantize_cache(how, sealed, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from ropeconvert.formats.source import hf_checkpoint, resolve

    cache = tmp_path / "cache"
    monkeypatch.setenv("ROPECONVERT_CACHE", str(cache))

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)  # half a shard on disk
        if how == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OutputError) as e:
        hf_checkpoint(resolve(str(sealed)), progress=False)
    line = e.value.one_line()
    assert line.startswith("ran out of space writing the dequantized copy of") and "ROPECONVERT_CACHE" in line, line
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing half-written in the cache


# ---- wrong blame ------------------------------------------------------------------------------------------------
def test_a_read_failure_of_the_source_is_not_a_write_failure(tmp_path, capsys, monkeypatch):
    src = tiny_gguf(tmp_path / "src.gguf")
    import ropeconvert.formats.gguf_reextend as X

    real = X.open_regular

    class Failing:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(X, "open_regular", lambda p, what="file": Failing(real(p, what)))
    out = tmp_path / "out.gguf"
    line = _refused([src, "-m", "yarn", "-s", "2", "--to", "gguf", "-o", out, "-q"], capsys, monkeypatch, out, src,
                    f"cannot read {src} (Input/output error)")
    assert "cannot write" not in line


def test_hf_to_gguf_read_failure_names_the_source(tiny_llama, tmp_path, capsys, monkeypatch):
    import ropeconvert.formats.gguf_stream as S

    def unreadable(file, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    monkeypatch.setattr(S.np, "fromfile", unreadable)
    out = tmp_path / "out.gguf"
    line = _refused([tiny_llama, "-m", "linear", "-s", "2", "--to", "gguf", "-o", out, "-q"], capsys, monkeypatch, out,
                    tiny_llama, f"cannot read {tiny_llama}", "(Permission denied)")
    assert "cannot write" not in line


def test_corpus_covers_the_issue_cases():
    n = len(GGUF_HEADER_CASES) + len(GGUF_METADATA_CASES) + len(HF_TO_GGUF_CASES) + len(HEADER_EDITS)
    assert n >= 40
