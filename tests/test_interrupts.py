"""Interrupted and failing runs: nothing at the final path, no leftovers elsewhere, and a re-run succeeds."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from helpers import assert_one_line_error, leftovers, run_cli, tree_digest, wait_mid_write


def _start(args, tmpdir, **kw):
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "ropeconvert", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _kill_mid_write(args, tmpdir, out) -> None:
    """SIGKILL once the export's temporary output holds a megabyte (the weights are being written)."""
    proc = _start(args, tmpdir)
    landed = wait_mid_write(proc, out)
    proc.kill()
    proc.communicate()
    assert landed, "the export ended before its write phase was seen"
    assert leftovers(out), "a killed run cannot clean up: its temporary must still be there"
    assert list(tmpdir.iterdir()) == []  # nothing written outside the output's parent directory


@pytest.mark.parametrize("to", ["hf", "gguf"])
def test_sigkill_mid_write_leaves_nothing_or_the_previous_export(medium_llama, tmp_path, to):
    """SIGKILL in the middle of writing, once to a new path (nothing appears there) and once in a `--force`
    re-export (the previous export stays, byte for byte); the next run to the same path sweeps the dead run's
    temporary (its PID is gone) and succeeds."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    parent = tmp_path / "out"
    parent.mkdir()
    out = parent / ("export.gguf" if to == "gguf" else "export")
    args = [medium_llama, "-m", "yarn", "--to", to, "-q", "-o", out]

    _kill_mid_write([*args, "-s", "2"], tmpdir, out)
    assert not os.path.lexists(out)
    done = run_cli(*args, "-s", "2")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in parent.iterdir()) == [out.name]
    previous = tree_digest(out)

    _kill_mid_write([*args, "-s", "4", "--force"], tmpdir, out)
    assert tree_digest(out) == previous  # the old export, whole: not a mix, not the new one
    rerun = run_cli(*args, "-s", "4", "--force")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in parent.iterdir()) == [out.name]
    assert tree_digest(out) != previous
    assert run_cli("verify", out, "-q").returncode == 0


def test_sigint_exits_cleanly(smollm2_hf, tmp_path):
    """Ctrl-C during the weight copy: exit 130, one line, nothing at the output path. The copy takes well under a
    second here, so a signal can land after the export already finished (exit 0, "wrote …"): such an attempt proves
    nothing and is retried; at least one must land mid-run."""
    out = tmp_path / "export"
    for _ in range(5):
        # a shell's background job inherits SIGINT ignored, and Python then installs no handler: give the child the
        # default disposition a terminal's Ctrl-C meets
        proc = _start([smollm2_hf, "-m", "linear", "-s", "2", "-o", out, "--force"], tmp_path,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # wait until the copy is under way (its progress bar appears on stderr), then press Ctrl-C
        buf = ""
        while "copy weights" not in buf:
            ch = proc.stderr.read(1)
            assert ch, "the export ended before the copy started"
            buf += ch
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
        if code == 0 and "wrote HF export" in rest + proc.stdout.read():
            continue  # finished before the signal was delivered: try again
        assert code == 130, rest
        assert "error: interrupted" in rest and "Traceback" not in rest
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if ".ropeconvert-tmp-" in p.name] == []
        return
    pytest.fail("every Ctrl-C landed after the export had finished")


def test_file_size_limit_reports_the_path(tiny_llama, tmp_path):
    """A real OS write failure (RLIMIT_FSIZE → EFBIG) mid-copy: one line naming the path, nothing left."""
    out = tmp_path / "export"
    cap = (tiny_llama / "model.safetensors").stat().st_size // 2  # the weights' copy hits it, the config does not

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))

    proc = subprocess.run([sys.executable, "-m", "ropeconvert", tiny_llama, "-m", "linear", "-s", "2", "-o", out, "-q"],
                          capture_output=True, text=True, preexec_fn=limit)
    assert_one_line_error(proc, "ran out of space writing", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_full_in_process(tiny_llama, tmp_path, monkeypatch):
    """ENOSPC from a failing file object: OutputError naming the path, no partial output."""
    import errno

    from ropeconvert.convert.methods import build_spec
    from ropeconvert.errors import OutputError
    from ropeconvert.formats.hf import write_hf_export
    from ropeconvert.formats.hf_config import base_rope_from_config
    from ropeconvert.formats.source import read_config

    def failing_copy(src, dst, on_chunk=None):
        dst.write_bytes(src.read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ropeconvert.formats.manifest.copy_file", failing_copy)
    spec = build_spec("linear", base_rope_from_config(read_config(tiny_llama)), factor=2.0)
    with pytest.raises(OutputError) as e:
        write_hf_export(tiny_llama, spec, tmp_path / "x", progress=False)
    assert "ran out of space writing" in e.value.one_line() and "no space left on the device" in e.value.one_line()
    assert list(tmp_path.iterdir()) == []
