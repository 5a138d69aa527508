"""Atomic outputs: everything is written under a temporary name beside the target and renamed at the end.

An interrupted or failed run leaves nothing at the final path (at most a `.NAME.ropeconvert-tmp-*` entry in the same
directory, which a later run ignores). An existing target is replaced only with force=True, and then only after the
new output is complete.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ropeconvert.errors import OutputError

TMP_MARK = ".ropeconvert-tmp-"


def check_output(out: Path, force: bool) -> Path:
    """Refuse early (before any work) when `out` cannot be written."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not force:
        raise OutputError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist", "create it first, or choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent} (permission denied or read-only)", "choose another --out")
    return out


@contextmanager
def atomic_output(out: Path, *, force: bool, directory: bool) -> Iterator[Path]:
    """Yield a temporary path (a fresh directory, or a file path) that becomes `out` when the block succeeds."""
    out = check_output(out, force)
    tmp = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        _commit(tmp, out)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            why = "file size limit reached" if e.errno == errno.EFBIG else "no space left on the device"
            raise OutputError(f"ran out of space writing {out} ({why} in {out.parent})",
                              "free some space or choose another --out") from None
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputError(f"cannot write {e.filename or out} ({os.strerror(e.errno)})", "choose another --out") from None
        raise


def _commit(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # --force: move the old output aside, put the new one in place, then delete the old one
    old = out.parent / f".{out.name}{TMP_MARK}old-{secrets.token_hex(4)}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
