"""Split GGUF input (llama-gguf-split's `NAME-00001-of-0000N.gguf`): every GGUF command given any shard reads the
whole split — a re-extension writes one merged GGUF equal to the one made from the unsplit file but for its
provenance, `--to hf` dequantizes the same weights, inspect/verify/validate read the split — and a split that does
not add up is one line, exit 2, nothing written.

The shards are written here with gguf-py's GGUFWriter exactly as llama.cpp's tools/gguf-split/gguf-split.cpp lays
them out: every key/value of the model in the first shard, `split.no` (u16), `split.count` (u16) and
`split.tensors.count` (i32) in every shard after them, each shard holding a contiguous run of the tensors.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys
from safetensors.numpy import load_file

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.gguf import write_gguf_export
from ropeconvert.formats.gguf_keys import PREFIX
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config

from helpers import assert_clean_refusal, run_cli, sha256

SPLIT = Keys.Split
# the provenance keys that name and digest the source: the only ones that may differ between the split's and the
# unsplit file's exports (and the seal, which hashes them)
PROVENANCE_KEYS = {"ropeconvert.sha256", "ropeconvert.source", "ropeconvert.source_name", "ropeconvert.source_sha256"}


def write_gguf(path: Path, reader, tensors, keys: bool = True, split: tuple[int, int, int] | None = None) -> Path:
    """A GGUF with the reader's key/values (keys=False: none, as gguf-split's later shards), `split` = (split.no,
    split.count, split.tensors.count) after them, and `tensors`' bytes as stored."""
    w = GGUFWriter(str(path), "llama", endianess=reader.endianess)
    w.kv_data[0].clear()  # the writer adds general.architecture itself: here it comes from the reader, or not at all
    for f in reader.fields.values() if keys else ():
        if f.name.startswith(("GGUF.", PREFIX)):  # gguf's own header fields; ropeconvert's: a plain model has none
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    if split is not None:
        w.add_uint16(SPLIT.LLM_KV_SPLIT_NO, split[0])
        w.add_uint16(SPLIT.LLM_KV_SPLIT_COUNT, split[1])
        w.add_int32(SPLIT.LLM_KV_SPLIT_TENSORS_COUNT, split[2])
    for t in tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors:
        w.write_tensor_data(t.data)
    w.close()
    return path


def split_gguf(src: Path, prefix: Path, n: int, count: dict[int, int] | None = None,
               tensors: dict[int, list] | None = None, no: dict[int, int] | None = None) -> list[Path]:
    """`src` as llama-gguf-split writes it in `n` shards PREFIX-0000i-of-0000n.gguf; `count` / `tensors` / `no`
    replace the split.count / the tensors / the split.no of the shards they name (0-based), to make broken splits."""
    reader = GGUFReader(str(src))
    runs = np.array_split(np.arange(len(reader.tensors)), n)
    paths = []
    for i, run in enumerate(runs):
        held = (tensors or {}).get(i, [reader.tensors[j] for j in run])
        path = prefix.parent / f"{prefix.name}-{i + 1:05d}-of-{n:05d}.gguf"
        paths.append(write_gguf(path, reader, held, keys=i == 0,
                                split=((no or {}).get(i, i), (count or {}).get(i, n), len(reader.tensors))))
    return paths


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_llama) -> Path:
    """A plain Q8_0 GGUF of the tiny llama (the project's HF → GGUF export, less ropeconvert's own keys): what
    llama.cpp's converter would give."""
    root = tmp_path_factory.mktemp("split")
    spec = build_spec("ntk", base_rope_from_config(read_config(tiny_llama)), factor=2.0)  # no scaling keys
    export, _ = write_gguf_export(tiny_llama, spec, root / "export.gguf", outtype="q8_0", progress=False)
    reader = GGUFReader(str(export))
    (root / "tiny").mkdir()
    return write_gguf(root / "tiny" / "tiny.gguf", reader, reader.tensors)


@pytest.fixture(scope="module")
def shards(plain, tmp_path_factory) -> list[Path]:
    return split_gguf(plain, tmp_path_factory.mktemp("shards") / "tiny", 3)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return {"ROPECONVERT_CACHE": str(tmp_path_factory.mktemp("cache"))}  # the dequantized copies, per test module


@pytest.fixture(scope="module")
def from_plain(plain, tmp_path_factory, env) -> Path:
    out = tmp_path_factory.mktemp("out-plain") / "x.gguf"
    proc = run_cli(plain, "--method", "yarn", "--factor", "2", "--to", "gguf", "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    return out


def fields(path: Path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


def test_the_shards_are_a_split_llama_cpp_would_read(plain, shards):
    """The fixture itself: three shards, tensors spread over all, keys in the first only, split.* in each."""
    readers = [GGUFReader(str(p)) for p in shards]
    assert [len(r.tensors) for r in readers] == [7, 7, 6]  # the tiny llama's 20 tensors
    assert all(r.fields[SPLIT.LLM_KV_SPLIT_COUNT].contents() == 3 for r in readers)
    assert [r.fields[SPLIT.LLM_KV_SPLIT_NO].types for r in readers] == [[GGUFValueType.UINT16]] * 3
    assert "general.architecture" in readers[0].fields and "general.architecture" not in readers[1].fields


@pytest.mark.parametrize("which", [0, 1])  # the first shard, or another one (resolved to the first)
def test_to_gguf_from_a_split_is_one_merged_file_equal_to_the_unsplit_ones(which, shards, plain, from_plain, env,
                                                                           tmp_path):
    out = tmp_path / "x.gguf"
    proc = run_cli(shards[which], "--method", "yarn", "--factor", "2", "--to", "gguf", "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "written as ONE merged GGUF" in proc.stdout and "without re-quantizing" in proc.stdout
    assert ("is a shard of a split GGUF: reading the split from its first shard tiny-00001-of-00003.gguf"
            in proc.stderr) == (which == 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]  # one file, no shards, no temporaries
    new, old = GGUFReader(str(out)), GGUFReader(str(from_plain))
    assert [(t.name, t.tensor_type) for t in new.tensors] == [(t.name, t.tensor_type) for t in old.tensors]
    for a, b in zip(new.tensors, old.tensors):
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
    mine, theirs = fields(out), fields(from_plain)
    assert not any(k.startswith("split.") for k in mine)  # else llama.cpp would look for shards beside it
    assert mine.keys() == theirs.keys()
    assert {k for k in mine if mine[k] != theirs[k]} == PROVENANCE_KEYS
    assert mine["ropeconvert.source_name"] == "tiny-00001-of-00003.gguf"
    # one digest over every shard in order: `cat tiny-*-of-00003.gguf | sha256sum`
    cat = tmp_path / "cat"
    cat.write_bytes(b"".join(p.read_bytes() for p in shards))
    assert mine["ropeconvert.source_sha256"] == sha256(cat)
    proc = run_cli("verify", out, "--source", shards[which])
    assert proc.returncode == 0 and "tensor bytes identical to the source" in proc.stdout, proc.stdout + proc.stderr


def test_a_first_shard_without_tensors(plain, from_plain, env, tmp_path):
    """llama-gguf-split --no-tensor-first-split: the first shard holds the key/values only."""
    t = GGUFReader(str(plain)).tensors
    shards = split_gguf(plain, tmp_path / "meta", 3, tensors={0: [], 1: t[:10], 2: t[10:]})
    out = tmp_path / "x.gguf"
    proc = run_cli(shards[2], "--method", "yarn", "--factor", "2", "--to", "gguf", "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    new, old = GGUFReader(str(out)), GGUFReader(str(from_plain))
    assert [np.asarray(a.data).tobytes() for a in new.tensors] == [np.asarray(b.data).tobytes() for b in old.tensors]


def test_to_hf_from_a_split_equals_the_unsplit_files(shards, plain, env, tmp_path):
    outs = {}
    for name, src in (("split", shards[0]), ("plain", plain)):
        outs[name] = tmp_path / name
        proc = run_cli(src, "--method", "yarn", "--factor", "2", "--to", "hf", "--out", outs[name], "-q", env=env)
        assert proc.returncode == 0, proc.stderr
    a, b = load_file(outs["split"] / "model.safetensors"), load_file(outs["plain"] / "model.safetensors")
    assert a.keys() == b.keys() and len(a) == 2 + 9 * 2  # embeddings, final norm, 9 tensors per layer
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((outs["split"] / "config.json").read_text()) == json.loads((outs["plain"] / "config.json").read_text())
    assert (outs["split"] / "tokenizer.json").read_bytes() == (outs["plain"] / "tokenizer.json").read_bytes()


def test_the_dequantized_copy_changes_with_any_shard(shards, tmp_path, monkeypatch):
    from ropeconvert.formats.gguf_read import open_gguf
    from ropeconvert.formats.source import hf_checkpoint, resolve

    monkeypatch.setenv("ROPECONVERT_CACHE", str(tmp_path / "cache"))
    local = [Path(shutil.copy2(p, tmp_path / p.name)) for p in shards]
    first = hf_checkpoint(resolve(str(local[0]), progress=False), progress=False)
    reader = open_gguf(local[2])
    assert reader is open_gguf(local[0])  # one reader for the split, found by any shard
    os.utime(local[2], ns=(1_000_000_000, 1_000_000_000))  # the last shard only
    assert open_gguf(local[0]) is not reader  # read again: one of its files changed
    second = hf_checkpoint(resolve(str(local[0]), progress=False), progress=False)
    assert first != second and (second / "config.json").is_file()


def test_inspect_any_shard_shows_the_split(shards, plain):
    proc = run_cli("inspect", shards[2], "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info.pop("split") == "3 shards, read from tiny-00001-of-00003.gguf"
    assert info == json.loads(run_cli("inspect", plain, "--json").stdout)


def _broken(tmp_path: Path, plain: Path, how: str) -> list[Path]:
    reader = GGUFReader(str(plain))
    t = reader.tensors
    if how == "missing":
        paths = split_gguf(plain, tmp_path / "tiny", 3)
        paths[1].unlink()
    elif how == "count":
        paths = split_gguf(plain, tmp_path / "tiny", 3, count={1: 2})
    elif how == "number":  # the third shard says it is the second
        paths = split_gguf(plain, tmp_path / "tiny", 3, no={2: 1})
    elif how == "total":  # the last shard lost its last tensor
        last = list(np.array_split(np.arange(len(t)), 3)[2])
        paths = split_gguf(plain, tmp_path / "tiny", 3, tensors={2: [t[j] for j in last[:-1]]})
    else:  # "duplicate": the second shard holds the first shard's first tensor too
        second = list(np.array_split(np.arange(len(t)), 3)[1])
        paths = split_gguf(plain, tmp_path / "tiny", 3, tensors={1: [t[0]] + [t[j] for j in second]})
    return paths


BROKEN = {
    "missing": "tiny-00002-of-00003.gguf is missing: all 3 shards must be in the same directory",
    "count": "tiny-00002-of-00003.gguf says split.count=2, tiny-00001-of-00003.gguf says 3",
    "number": "tiny-00003-of-00003.gguf carries split.no=1, but its name makes it shard 3 (split.no 2)",
    "total": "the 3 shards of tiny hold",
    "duplicate": "is in both tiny-00001-of-00003.gguf and tiny-00002-of-00003.gguf",
}


@pytest.mark.parametrize("how", list(BROKEN))
@pytest.mark.parametrize("to", ["gguf", "hf"])
def test_a_broken_split_is_refused_in_one_line(how, to, plain, tmp_path):
    shards = _broken(tmp_path, plain, how)
    out, cache = tmp_path / ("x.gguf" if to == "gguf" else "x"), tmp_path / "cache"
    proc = run_cli(shards[0], "--method", "yarn", "--factor", "2", "--to", to, "--out", out, "-q",
                   env={"ROPECONVERT_CACHE": str(cache)})
    line = assert_clean_refusal(proc, out, None, None, BROKEN[how])
    n = len(GGUFReader(str(plain)).tensors)
    if how == "total":
        assert f"hold {n - 1} tensors, but tiny-00001-of-00003.gguf says split.tensors.count={n}" in line, line
    assert not cache.exists()  # nothing dequantized either


def test_a_renamed_shard_is_refused(shards, tmp_path):
    renamed = shutil.copy(shards[0], tmp_path / "model.gguf")
    proc = run_cli("inspect", renamed)
    assert_clean_refusal(proc, None, None, None, "model.gguf is shard 1 of a 3-file split GGUF, but its name is not "
                                                 "PREFIX-00001-of-00003.gguf")


@pytest.mark.llamacpp  # make install always installs it: a missing llama.cpp fails here, it is not skipped
def test_llama_cpp_runs_the_split_and_the_merged_export(shards, plain, from_plain, env, tmp_path):
    from ropeconvert.validators.llamacpp import gguf_eval, gguf_info

    out = tmp_path / "m.gguf"
    proc = run_cli(shards[0], "--method", "yarn", "--factor", "2", "--to", "gguf", "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    # one file, with no split.* keys to send llama.cpp after shards, and the extended context
    assert gguf_info(out).n_ctx_train == fields(from_plain)["llama.context_length"]
    assert fields(out)["llama.rope.scaling.type"] == "yarn"
    ids = list(range(3, 300))
    assert np.array_equal(gguf_eval(out, ids).nll, gguf_eval(from_plain, ids).nll)
    assert np.array_equal(gguf_eval(shards[0], ids).nll, gguf_eval(plain, ids).nll)  # llama.cpp reads the split too
    # validate with the split as the base: llama.cpp runs it from its first shard (any shard given)
    proc = run_cli("validate", out, "--base", shards[1], "--tasks", "ppl", "--lengths", "64,128", "--documents", "1",
                   "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "m.report" / "report.json").read_text())
    assert report["runtime"]["engine"] == "llama.cpp" and not any("transformers" in n for n in report["notes"])


def test_default_output_name_of_a_split_names_the_model():
    from types import SimpleNamespace

    from ropeconvert.convert.pipeline import default_out

    split = SimpleNamespace(name="models/tiny-00001-of-00003.gguf")
    assert default_out(split, "yarn", 512, "gguf").name == "tiny-yarn-512.gguf"
    assert default_out(SimpleNamespace(name="tiny.gguf"), "yarn", 512, "hf").name == "tiny-yarn-512"
