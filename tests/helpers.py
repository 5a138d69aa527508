"""Helpers shared by tests: run the real CLI in a subprocess, hash files."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ropeconvert", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=full_env)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, exactly one line on stderr starting with 'error:', no traceback, containing every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 (or "dir"/"link:target") of everything under `root`: a source must hash the same
    before and after a refused run."""
    import os

    root = Path(root)
    if root.is_file():
        return {root.name: sha256(root)}
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = sha256(p)
    return out


def leftovers(out: Path) -> list[str]:
    """Temporary entries a run left beside `out` (`.NAME.ropeconvert-tmp-*`)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}") and "ropeconvert-tmp" in p.name)


def assert_clean_refusal(proc: subprocess.CompletedProcess, out: Path | None, source: Path | None = None,
                         before: dict[str, str] | None = None, *needles: str, existed: bool = False) -> str:
    """The contract for bad input: exit 2, one `error:` line naming the problem, no traceback, nothing new at the
    output path (`existed`: it was there before and must still be), no temp files beside it, source unchanged."""
    line = assert_one_line_error(proc, *needles)
    if out is not None:
        assert Path(out).exists() == existed or Path(out).is_symlink(), (out, line)
        assert not leftovers(out), leftovers(out)
    if source is not None and before is not None:
        assert tree_digest(source) == before, f"source {source} changed"
    return line


def temp_bytes(out: Path) -> int | None:
    """Bytes written so far under the temporaries of `out` (`.NAME.ropeconvert-tmp-*`; not a commit's `-old`, the
    previous export moved aside), or None while there is none."""
    total = None
    for tmp in Path(out).parent.glob(f".{Path(out).name}.ropeconvert-tmp-*"):
        if tmp.name.endswith("-old"):
            continue
        files = [tmp] if not tmp.is_dir() else [p for p in tmp.rglob("*")]
        for p in files:
            try:
                total = (total or 0) + (p.stat().st_size if p.is_file() else 0)
            except OSError:  # renamed or removed meanwhile
                pass
    return total


def wait_mid_write(proc: subprocess.Popen, out: Path, min_bytes: int = 1 << 20, timeout: float = 300) -> bool:
    """Until a temporary of `out` holds `min_bytes` while `proc` runs: True, the export is being written (a signal
    sent now lands in the write phase); False when the process ended first."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if (temp_bytes(out) or 0) >= min_bytes:
            return True
        time.sleep(0.002)
    return False
