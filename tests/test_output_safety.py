"""Outputs never destroy data (issue 23): an output is never, never contains and never lies inside the source;
--force replaces only a previous ropeconvert export; `--to both` commits both halves or neither; the final rename
never replaces what another process put there; parents are made and removed again on failure; temporaries of dead
runs are swept. The CLI runs in-process (tests/test_malformed_inputs.py's run_main); the whole tmp tree is hashed
before and after every refusal, so a changed source, a replaced output or a leftover temporary all fail."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import tree_digest
from test_malformed_inputs import run_main

from ropeconvert.formats import output_commit
from ropeconvert.formats.output import atomic_output
from ropeconvert.signals import Interrupted

YARN = ["-m", "yarn", "-s", "2", "-q"]


@pytest.fixture
def src(tiny_llama, tmp_path):
    """A private copy of the tiny model (a refusal that failed would destroy it)."""
    d = tmp_path / "models" / "src"
    shutil.copytree(tiny_llama, d)
    return d


def small_gguf(path: Path) -> Path:
    """A llama GGUF with the keys a conversion reads and one tensor: no vocabulary, so opening it costs nothing."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(16)
    w.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def refused(args, needle, capsys, monkeypatch, root: Path, code: int = 2) -> str:
    """Exit `code`, one `error:` line holding `needle`, and nothing under `root` changed, added or removed."""
    before = tree_digest(root)
    got, err = run_main(args, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (got, err)
    assert tree_digest(root) == before
    return lines[0]


def ok(args, capsys, monkeypatch) -> None:
    code, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err


SOURCE_CASES = [  # (id, args after the source given the source and tmp_path, words in the one line)
    ("out-is-source", lambda s, t: ["-o", s, "--force"], "is the source itself"),
    ("out-is-parent-of-source", lambda s, t: ["-o", s.parent, "--force"], "contains the source"),
    ("out-is-grandparent", lambda s, t: ["-o", t, "--force"], "contains the source"),
    ("gguf-onto-a-source-file", lambda s, t: ["--to", "gguf", "-o", s / "model.safetensors", "--force"], "lies inside the source"),
    ("new-dir-inside-source", lambda s, t: ["-o", s / "sub" / "x"], "lies inside the source"),
    ("both-inside-source", lambda s, t: ["--to", "both", "-o", s / "x"], "lies inside the source"),
    ("dotdot-alias", lambda s, t: ["-o", f"{s.parent}/nothere/../{s.name}", "--force"], "is the source itself"),
    ("symlinked-parent", lambda s, t: (t / "link").symlink_to(s) or ["-o", t / "link" / "x"], "lies inside the source"),
    ("symlink-to-source", lambda s, t: (t / "l2").symlink_to(s) or ["-o", t / "l2", "--force"], "is the source itself"),
]


@pytest.mark.parametrize("case,args,needle", SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_output_never_touches_an_hf_source(case, args, needle, src, tmp_path, capsys, monkeypatch):
    extra = args(src, tmp_path)
    refused([src, *YARN, *extra], needle, capsys, monkeypatch, tmp_path)


def test_output_never_touches_a_gguf_source_or_its_dequantized_copy(tiny_llama, tmp_path, capsys, monkeypatch):
    (tmp_path / "models").mkdir()
    g = small_gguf(tmp_path / "models" / "tiny.gguf")
    for extra, needle in [(["--to", "gguf", "-o", g, "--force"], "is the source itself"),
                          (["--to", "hf", "-o", g, "--force"], "is the source itself"),
                          (["--to", "hf", "-o", g.parent, "--force"], "contains the source"),
                          (["--to", "both", "-o", g.with_suffix(""), "--force"], "is the source itself")]:
        refused([g, *YARN, *extra], needle, capsys, monkeypatch, tmp_path)
    # an HF export of a GGUF reads its dequantized copy in the cache (stood in for here: dequantizing takes ~30 s)
    cached = tmp_path / "cache" / "tiny-0123"
    shutil.copytree(tiny_llama, cached)
    monkeypatch.setattr("ropeconvert.convert.pipeline.hf_checkpoint", lambda source, progress=True: cached)
    refused([g, *YARN, "--to", "hf", "-o", cached / "x"], "lies inside the source", capsys, monkeypatch, tmp_path)


PATH_CASES = [
    ("empty", lambda t: "", "is not a name for a new export"),
    ("dot", lambda t: ".", "is not a name for a new export"),
    ("dotdot", lambda t: "..", "is not a name for a new export"),
    ("root", lambda t: "/", "is not a name for a new export"),
    ("dangling-symlink", lambda t: (t / "dl").symlink_to(t / "nowhere") or t / "dl", "which does not exist"),
    ("symlink-to-a-directory", lambda t: (t / "real").mkdir() or (t / "sl").symlink_to(t / "real") or t / "sl", "is a symlink"),
    ("name-too-long", lambda t: t / ("a" * 240), "exceeds the filesystem's 255-byte limit"),
    ("parent-is-a-file", lambda t: (t / "afile").write_text("x") and t / "afile" / "x", "cannot be created"),
]


@pytest.mark.parametrize("case,out,needle", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_bad_output_paths_refused_before_any_work(case, out, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    refused([tiny_llama, *YARN, "-o", out(tmp_path), "--force"], needle, capsys, monkeypatch, tmp_path)


def test_name_too_long_for_the_gguf_half_refused_before_the_hf_half(tiny_llama, tmp_path, capsys, monkeypatch):
    out = tmp_path / ("b" * 215)  # fits for the directory; `<out>.gguf` does not
    refused([tiny_llama, *YARN, "--to", "both", "-o", out], "255-byte limit", capsys, monkeypatch, tmp_path)


def _foreign_gguf(p):
    p.write_bytes(b"GGUF" + bytes(60))  # llama.cpp's or a download: not ropeconvert's keys


FORCE_CASES = [  # (id, make the existing entry, --to, words)
    ("user-directory", lambda p: p.mkdir() or (p / "notes.txt").write_text("mine"), "hf", "is a directory that is not a ropeconvert export"),
    ("bad-manifest", lambda p: p.mkdir() or (p / "ropeconvert.json").write_text("{"), "hf", "not a ropeconvert export"),
    ("file-for-hf", lambda p: p.write_text("mine"), "hf", "is a file, not an export directory"),
    ("foreign-gguf", _foreign_gguf, "gguf", "is not a GGUF file written by ropeconvert"),
    ("text-for-gguf", lambda p: p.write_text("mine"), "gguf", "is not a GGUF file written by ropeconvert"),
    ("directory-for-gguf", lambda p: p.mkdir() or (p / "a").write_text("x"), "gguf", "is a directory, not a GGUF file"),
    ("fifo-for-gguf", lambda p: os.mkfifo(p), "gguf", "is not a regular file"),
]


@pytest.mark.parametrize("case,make,to,needle", FORCE_CASES, ids=[c[0] for c in FORCE_CASES])
def test_force_refuses_what_is_not_a_previous_export(case, make, to, needle, tiny_llama, tmp_path, capsys, monkeypatch):
    out = tmp_path / ("out.gguf" if to == "gguf" else "out")
    make(out)
    line = refused([tiny_llama, *YARN, "--to", to, "-o", out, "--force"], needle, capsys, monkeypatch, tmp_path)
    assert "--force only replaces a previous ropeconvert export" in line


def test_force_replaces_previous_exports_and_empty_entries(tiny_llama, tmp_path, capsys, monkeypatch):
    for to, name in [("hf", "x"), ("gguf", "x.gguf")]:
        ok([tiny_llama, "-m", "linear", "-s", "2", "-q", "--to", to, "-o", tmp_path / name], capsys, monkeypatch)
        ok([tiny_llama, *YARN, "--to", to, "-o", tmp_path / name, "--force"], capsys, monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.gguf").write_bytes(b"")
    ok([tiny_llama, *YARN, "--to", "both", "-o", tmp_path / "empty", "--force"], capsys, monkeypatch)
    assert (tmp_path / "empty" / "ropeconvert.json").is_file() and (tmp_path / "empty.gguf").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "empty.gguf", "x", "x.gguf"]


def _during_write(monkeypatch, module: str, action):
    """Run `action(out)` after the writer in `module` (hf, or gguf_writer for every GGUF) filled its temporary
    output and before it is committed."""
    @contextmanager
    def wrapped(out, **kw):
        with atomic_output(out, **kw) as tmp:
            yield tmp
            action(Path(out))

    monkeypatch.setattr(f"ropeconvert.formats.{module}.atomic_output", wrapped)


def _raise(make):
    def action(out):
        raise make()  # made here, as a signal handler makes it
    return action


@pytest.mark.parametrize("failure,code,needle", [
    (lambda: OSError(errno.ENOSPC, "No space left on device"), 2, "ran out of space writing"),
    (lambda: Interrupted(signal.SIGTERM), 143, "interrupted (SIGTERM)"),
    (lambda: RuntimeError("a bug"), 1, "internal error"),
], ids=["disk-full", "sigterm", "bug"])
def test_both_force_with_a_failing_gguf_half_keeps_both_previous_outputs(failure, code, needle, tiny_llama, tmp_path,
                                                                          capsys, monkeypatch):
    out = tmp_path / "x"
    ok([tiny_llama, "-m", "linear", "-s", "2", "-q", "--to", "both", "-o", out], capsys, monkeypatch)
    _during_write(monkeypatch, "gguf_writer", _raise(failure))  # the new GGUF is complete in its temporary file, then fails
    refused([tiny_llama, *YARN, "--to", "both", "-o", out, "--force"], needle, capsys, monkeypatch, tmp_path, code)


def test_both_with_a_method_the_gguf_cannot_carry_writes_nothing(tiny_llama, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    ok([tiny_llama, "-m", "linear", "-s", "2", "-q", "--to", "both", "-o", out], capsys, monkeypatch)
    refused([tiny_llama, "-m", "dynamic", "-s", "2", "-q", "--to", "both", "-o", out, "--force"], "dynamic",
            capsys, monkeypatch, tmp_path)


def test_both_commits_together_or_not_at_all(tiny_llama, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x"
    # another process writes <out>.gguf meanwhile: this run keeps neither half
    _during_write(monkeypatch, "gguf_writer", lambda o: o.write_bytes(b"theirs"))
    code, err = run_main([tiny_llama, *YARN, "--to", "both", "-o", out], capsys, monkeypatch)
    assert code == 2 and "appeared while this export was running" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"] and (tmp_path / "x.gguf").read_bytes() == b"theirs"
    (tmp_path / "x.gguf").unlink()
    monkeypatch.undo()
    # --force, and the previous HF export is swapped for a user's directory meanwhile: the re-check at the commit
    # refuses to replace it, and the previous GGUF stays too
    ok([tiny_llama, "-m", "linear", "-s", "2", "-q", "--to", "both", "-o", out], capsys, monkeypatch)
    gguf_before = tree_digest(tmp_path / "x.gguf")

    def swap(o):
        shutil.rmtree(o)
        o.mkdir()
        (o / "mine.txt").write_text("mine")

    _during_write(monkeypatch, "hf", swap)
    code, err = run_main([tiny_llama, *YARN, "--to", "both", "-o", out, "--force"], capsys, monkeypatch)
    assert code == 2 and "changed while this export was running" in err and "is a directory that is not" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and tree_digest(tmp_path / "x.gguf") == gguf_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "x.gguf"]


@pytest.mark.parametrize("module,to,appears", [
    ("hf", "hf", lambda o: o.mkdir()),  # os.rename would silently replace an empty directory
    ("hf", "hf", lambda o: o.mkdir() or (o / "theirs").write_text("x")),
    ("gguf_writer", "gguf", lambda o: o.write_bytes(b"theirs")),  # ... and any file
], ids=["empty-dir", "dir", "file"])
def test_an_output_that_appears_meanwhile_is_never_replaced(module, to, appears, tiny_llama, tmp_path, capsys,
                                                            monkeypatch):
    out = tmp_path / ("x.gguf" if to == "gguf" else "x")
    snapshot = {}

    def race(o):
        appears(o)
        snapshot.update(tree_digest(o))

    _during_write(monkeypatch, module, race)
    code, err = run_main([tiny_llama, *YARN, "--to", to, "-o", out], capsys, monkeypatch)
    assert code == 2 and "appeared while this export was running" in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(out) == snapshot and [p.name for p in tmp_path.iterdir()] == [out.name]  # theirs as it was


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2-and-link", "claim-fallback"])
@pytest.mark.parametrize("directory", [True, False], ids=["directory", "file"])
def test_place_never_replaces(directory, fallback, tmp_path, monkeypatch):
    if fallback:  # a filesystem without hard links and a kernel without renameat2
        monkeypatch.setattr(output_commit, "_renameat2", lambda: None)
        monkeypatch.setattr(output_commit.os, "link", lambda a, b: (_ for _ in ()).throw(OSError(errno.EPERM, "no")))
    elif directory:
        assert output_commit._renameat2() is not None or os.uname().sysname != "Linux"
    new = tmp_path / "new"
    new.mkdir() if directory else new.write_text("new")
    if directory:
        (new / "f").write_text("new")
    for existing in ("empty", "full"):
        dst = tmp_path / existing
        if directory:
            dst.mkdir()
            if existing == "full":
                (dst / "g").write_text("theirs")
        else:
            dst.write_text("" if existing == "empty" else "theirs")
        before = tree_digest(tmp_path)
        with pytest.raises(FileExistsError):
            output_commit.place(new, dst, directory)
        assert tree_digest(tmp_path) == before
    output_commit.place(new, tmp_path / "fresh", directory)
    assert not new.exists() and (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "fresh", "full"]


def test_missing_parents_are_made(tiny_llama, tmp_path, capsys, monkeypatch):
    """`ropeconvert smollm2-135m --method yarn --factor 2 --to hf --out out/x` on a fresh clone (issue 16)."""
    monkeypatch.chdir(tmp_path)
    ok([tiny_llama, "--method", "yarn", "--factor", "2", "--to", "hf", "--out", "out/x", "-q"], capsys, monkeypatch)
    ok([tiny_llama, *YARN, "--to", "both", "-o", tmp_path / "a" / "b" / "y"], capsys, monkeypatch)
    assert (tmp_path / "out" / "x" / "ropeconvert.json").is_file() and (tmp_path / "a" / "b" / "y.gguf").is_file()


@pytest.mark.parametrize("failure,code", [(lambda: OSError(errno.ENOSPC, "full"), 2),
                                          (lambda: Interrupted(signal.SIGHUP), 129)], ids=["disk-full", "sighup"])
def test_parents_made_by_a_failed_run_are_removed(failure, code, tiny_llama, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep").mkdir()
    _during_write(monkeypatch, "hf", _raise(failure))
    refused([tiny_llama, *YARN, "-o", tmp_path / "keep" / "new" / "deeper" / "x"], "error", capsys, monkeypatch,
            tmp_path, code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and not any((tmp_path / "keep").iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_runs_are_swept(tiny_llama, tmp_path, capsys, monkeypatch):
    dead, host = _dead_pid(), output_commit._HOST
    stale = [f".x.ropeconvert-tmp-{dead}-{host}beef", f".x.ropeconvert-tmp-{dead}-{host}bee0"]
    kept = [f".x.ropeconvert-tmp-{os.getpid()}-{host}cafe",  # a live process (this one)
            f".x.ropeconvert-tmp-{dead}-{'0000' if host != '0000' else '1111'}cafe",  # another machine's
            f".y.ropeconvert-tmp-{dead}-{host}beef"]  # another output's
    (tmp_path / stale[0]).mkdir()
    (tmp_path / stale[0] / "model.safetensors").write_bytes(bytes(100))
    for name in stale[1:] + kept:
        (tmp_path / name).write_bytes(b"partial")
    ok([tiny_llama, *YARN, "-o", tmp_path / "x"], capsys, monkeypatch)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["x"])


def test_previous_output_moved_aside_by_a_killed_commit_is_restored(tiny_llama, tmp_path, capsys, monkeypatch):
    """SIGKILL between moving the previous export aside and moving the new one in: the next run puts it back."""
    out, dead, host = tmp_path / "x", _dead_pid(), output_commit._HOST
    ok([tiny_llama, "-m", "linear", "-s", "2", "-q", "-o", out], capsys, monkeypatch)
    before = tree_digest(out)
    aside = tmp_path / f".x.ropeconvert-tmp-{dead}-{host}beef-old"
    out.rename(aside)
    code, err = run_main([tiny_llama, *YARN, "-o", out], capsys, monkeypatch)
    assert code == 2 and "already exists" in err and tree_digest(out) == before and not aside.exists()
    # killed after the new export was in place: the old one aside is only deleted
    shutil.copytree(out, aside)
    ok([tiny_llama, *YARN, "-o", out, "--force"], capsys, monkeypatch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_a_signal_during_the_commit_waits_until_it_is_done(tiny_llama, tmp_path, capsys, monkeypatch):
    """SIGTERM between putting the HF half and the GGUF half in place: the commit finishes, then the run ends with
    143 and says what it kept (a half-committed `--to both` would be a mix of old and new)."""
    from ropeconvert import signals

    out = tmp_path / "x"
    real_place, calls = output_commit.place, []

    def place(src, dst, directory):
        calls.append(dst)
        if len(calls) == 1:
            signals._handler(signal.SIGTERM, None)  # what the OS delivering SIGTERM runs, in the deferred section
        real_place(src, dst, directory)

    monkeypatch.setattr(output_commit, "place", place)
    code, err = run_main([tiny_llama, *YARN, "--to", "both", "-o", out], capsys, monkeypatch)
    assert code == 143 and "interrupted (SIGTERM)" in err and "had already been written in full" in err, err
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["x", "x.gguf"]
    for path in (out, tmp_path / "x.gguf"):
        code, err = run_main(["verify", path, "-q"], capsys, monkeypatch)
        assert code == 0, err
