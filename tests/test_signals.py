"""Real CLI processes: SIGTERM and SIGHUP in the middle of an export end like Ctrl-C (one line, exit 128+n,
nothing left behind), and two exports started together to one new path → exactly one wins, the other exits 2.
(A signal during the commit itself is deferred: tests/test_output_safety.py.)

Each process imports the exporter first and waits for a "go" line on stdin before it runs `ropeconvert.cli.main()`
with its arguments: a signal then lands in the export rather than in the imports, and two racing processes start
their exports within a millisecond of each other."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import wait_mid_write
from test_malformed_inputs import run_main

RACES = 4  # at most, per format: until one race has reached the final rename (usually the first)
YARN = ["-m", "yarn", "-s", "2", "-q"]
LAUNCH = """
import sys
import ropeconvert.cli, ropeconvert.convert.pipeline, ropeconvert.formats.hf, ropeconvert.formats.gguf
print("ready", flush=True)
sys.stdin.readline()
sys.argv = ["ropeconvert", *sys.argv[1:]]
ropeconvert.cli.main()
"""


def _default_signals():  # as a terminal's job gets them, whatever the test runner was started with (nohup, &)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def launch(*args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def go(*procs: subprocess.Popen) -> float:
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return time.monotonic()


def wait_handled(proc: subprocess.Popen, sig: int) -> None:
    """Until the process handles `sig` (ropeconvert.cli.main installed its handler: /proc/PID/status SigCgt)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1]
        if int(caught, 16) >> (sig - 1) & 1:
            return
        time.sleep(0.001)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_verifies(path: Path, capsys, monkeypatch) -> None:
    code, err = run_main(["verify", path, "-q"], capsys, monkeypatch)
    assert code == 0, err


@pytest.mark.parametrize("to", ["hf", "both"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_mid_export_leaves_nothing_behind(sig, to, medium_llama, tmp_path):
    """The signal lands while the weights are being written (for --to both: while the GGUF is, the HF export being
    complete but not yet in place): exit 128+n, one line saying nothing was written, and nothing left — not even
    the parent directory the run made. A signal that arrives after the export finished proves nothing: retried."""
    for attempt in range(3):
        parent = tmp_path / f"attempt{attempt}"
        parent.mkdir()
        out = parent / "new" / "x"  # `new` is made by the run, and removed again unless an export is kept
        proc = launch(medium_llama, *YARN, "--to", to, "-o", out)
        go(proc)
        wait_handled(proc, sig)  # before main() installs it, a signal would kill the process with no word
        landed = wait_mid_write(proc, out.with_name("x.gguf") if to == "both" else out)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
        if not landed or proc.returncode == 0:
            continue
        lines = error_lines(stderr)
        assert proc.returncode == 128 + sig, (proc.returncode, stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: interrupted ({sig.name}) — ") and \
            "nothing was written" in lines[0] and "Traceback" not in stderr, stderr
        assert list(parent.iterdir()) == []
        return
    pytest.fail("every signal landed after the export had finished")


@pytest.mark.parametrize("to", ["hf", "gguf"])
def test_two_exports_racing_to_one_new_path(to, tiny_llama, tmp_path, capsys, monkeypatch):
    appeared = 0
    for trial in range(RACES):
        out = tmp_path / f"race{trial}" / ("x.gguf" if to == "gguf" else "x")
        procs = [launch(tiny_llama, *YARN, "--to", to, "-o", out) for _ in range(2)]
        go(*procs)
        results = [proc.communicate(timeout=300) for proc in procs]
        codes = [proc.returncode for proc in procs]
        assert sorted(codes) == [0, 2], (codes, results)
        loser = error_lines(results[codes.index(2)][1])
        assert len(loser) == 1 and ("appeared while this export was running" in loser[0]
                                    or "already exists" in loser[0]), loser
        appeared += "appeared while" in loser[0]
        assert_verifies(out, capsys, monkeypatch)  # whole, and its rope is the spec it was made with
        assert [p.name for p in out.parent.iterdir()] == [out.name]
        if appeared:
            break
    assert appeared >= 1  # at least one race reached the final rename (not only the early existence check)
