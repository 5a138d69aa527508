"""Interrupted and failing runs: nothing at the final path, no leftovers elsewhere, and a re-run succeeds."""
from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest

from helpers import assert_one_line_error, run_cli

TRIALS_HF = 14
TRIALS_GGUF = 6  # 20 kills in all (a GGUF trial costs ~10× an HF one: the tokenizer load)


def _start(args, tmpdir, **kw):
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "ropeconvert", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _leftovers(parent, out):
    return sorted(p.name for p in parent.iterdir() if p.name != out.name and ".ropeconvert-tmp-" not in p.name)


@pytest.fixture(scope="module")
def medium_llama(tmp_path_factory, smollm2_hf):
    """~150 MB of random weights in 3 shards: big enough that kills land mid-copy, small enough for CI."""
    from conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("medium") / "medium", smollm2_hf, head_dim=64, layers=4,
                           shard_size="60MB")


@pytest.mark.parametrize("to,trials", [("hf", TRIALS_HF), ("gguf", TRIALS_GGUF)])
def test_sigkill_at_random_moments(medium_llama, tmp_path, to, trials):
    """SIGKILL at random moments of an export: the output is either absent or complete, never partial."""
    rng = random.Random(1234)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    args = [medium_llama, "-m", "yarn", "-s", "2", "--to", to, "-q"]
    t0 = time.monotonic()
    full = _start(args + ["-o", tmp_path / "timing"], tmpdir)
    assert full.wait(timeout=300) == 0
    duration = time.monotonic() - t0
    outcomes = {"absent": 0, "complete": 0}
    for trial in range(trials):
        parent = tmp_path / f"trial{trial}"
        parent.mkdir()
        out = parent / ("export.gguf" if to == "gguf" else "export")
        proc = _start(args + ["-o", out], tmpdir)
        time.sleep(rng.uniform(0.2, duration * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # finished before the kill: must be whole
            outcomes["complete"] += 1
            assert run_cli("verify", out, "-q").returncode == 0
        else:
            outcomes["absent"] += 1
        assert _leftovers(parent, out) == []
        assert list(tmpdir.iterdir()) == []  # nothing left outside the output's parent directory
        rerun = run_cli(*args, "-o", out, "--force")
        assert rerun.returncode == 0 and out.exists(), rerun.stderr
        # a killed run cannot clean up; the next run to the same output sweeps what it left (its PID is dead)
        assert sorted(p.name for p in parent.iterdir()) == [out.name]
    assert outcomes["absent"] >= trials // 3, outcomes  # most kills land mid-run


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

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

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
