"""The filesystem side of formats/output.py: temporary names, a rename that never replaces, committing several
outputs together, recognising a previous export, and sweeping the temporaries of runs that died.

Never replacing: `os.rename` silently replaces a file or an empty directory that another process created meanwhile.
A file is put in place with `link` (fails with EEXIST) then `unlink`; a directory with Linux's
renameat2(RENAME_NOREPLACE); where neither works the name is first claimed with mkdir / O_EXCL (which fail if
anything is there) and the rename then replaces only that empty claim.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import struct
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from ropeconvert.errors import InputError, OutputError
from ropeconvert.signals import deferred, note_written

TMP_MARK = ".ropeconvert-tmp-"
# the host is part of the random tag, so a run never sweeps a live temporary of another machine on a shared disk
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]
TEMP_EXTRA = len(f".{TMP_MARK}{'9' * 7}-{'0' * 8}-old")  # the most a temporary's name adds to the output's name


def temp_name(out: Path) -> Path:
    return out.parent / f".{out.name}{TMP_MARK}{os.getpid()}-{_HOST}{secrets.token_hex(2)}"


@dataclass
class Pending:
    """One output written at `tmp`, waiting to become `out`; `made`: parent directories this run created."""

    tmp: Path
    out: Path
    directory: bool
    force: bool
    made: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        remove(self.tmp)
        remove_dirs(self.made)


def commit(jobs: list[Pending]) -> None:
    """Put every job's output in place, or none: previous outputs (--force) are moved aside first (and must still be
    ropeconvert exports), then the new ones moved in without replacing anything; any failure moves everything back."""
    with deferred():  # a signal in the middle would leave a mix of old and new
        asides: list[tuple[Pending, Path]] = []
        placed: list[Pending] = []
        try:
            for job in jobs:
                if not os.path.lexists(job.out):
                    continue
                if not job.force:
                    raise _appeared(job.out)
                aside = Path(f"{job.tmp}-old")
                os.rename(job.out, aside)
                asides.append((job, aside))
                why = replaceable(aside, job.directory)
                if why:
                    raise OutputError(f"{job.out} changed while this export was running: it {why}",
                                      "nothing of this run was kept; move it away or choose another --out")
            for job in jobs:
                try:
                    place(job.tmp, job.out, job.directory)
                except FileExistsError:
                    raise _appeared(job.out) from None
                placed.append(job)
        except BaseException:
            for job in reversed(placed):
                with suppress(OSError):
                    os.rename(job.out, job.tmp)  # ours: taken back out, the caller discards it
            for job, aside in reversed(asides):
                with suppress(OSError):  # if this fails the previous output stays aside and a later run restores it
                    place(aside, job.out, job.directory)
            raise
        for _, aside in asides:
            remove(aside)
        for job in jobs:
            note_written(job.out)


def _appeared(out: Path) -> OutputError:
    return OutputError(f"{out} appeared while this export was running (another process wrote it)",
                       "nothing of this run was kept; pass --force to replace it, or choose another --out")


def place(src: Path, dst: Path, directory: bool) -> None:
    """Rename `src` to `dst`; FileExistsError if anything is at `dst` (it is never replaced)."""
    if not directory:
        try:
            os.link(src, dst)
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links on this filesystem: try the others
        else:
            os.unlink(src)
            return
    if _rename_noreplace(src, dst):
        return
    if directory:
        os.mkdir(dst)
    else:
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        os.replace(src, dst)
    except OSError as e:
        with suppress(OSError):
            os.rmdir(dst) if directory else os.unlink(dst)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # someone wrote into our claim
            raise FileExistsError(e.errno, os.strerror(e.errno), str(dst)) from None
        raise


@functools.cache
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc older than glibc 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """renameat2(RENAME_NOREPLACE): True when done; False where the kernel or filesystem lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_noreplace = -100, 1
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(src))


def replaceable(path: Path, directory: bool | None) -> str | None:
    """None when --force may replace `path` with an output of this kind, else why not (a phrase after the path)."""
    if path.is_symlink():
        return "is a symlink"
    if path.is_dir():
        if directory is False:
            return "is a directory, not a GGUF file"
        if not any(os.scandir(path)) or _is_hf_export(path):
            return None
        return "is a directory that is not a ropeconvert export (it has no valid ropeconvert.json)"
    if directory is True:
        return "is a file, not an export directory"
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0 or _is_ropeconvert_gguf(path):
        return None
    return "is not a GGUF file written by ropeconvert"


def _is_hf_export(path: Path) -> bool:
    from ropeconvert.formats.manifest import MANIFEST_FILE, load_manifest

    if not (path / MANIFEST_FILE).is_file():
        return False
    try:
        manifest = load_manifest(path)
    except (InputError, OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest.get("spec"), dict)


def _is_ropeconvert_gguf(path: Path) -> bool:
    """GGUF magic, and a `ropeconvert.*` key near the start: the digest and provenance keys come first."""
    from ropeconvert.formats.safe_io import open_regular

    try:
        with open_regular(path, "output") as f:
            head = f.read(1 << 20)
    except (InputError, OSError):
        return False
    if head[:4] != b"GGUF":
        return False
    for m in re.finditer(rb"ropeconvert\.[a-z0-9_.]+", head):  # a key is its u64 length, then its bytes
        if m.start() >= 8 and struct.unpack("<Q", head[m.start() - 8:m.start()])[0] == len(m[0]):
            return True
    return False


def sweep_stale(out: Path) -> None:
    """Remove the temporaries of `out` left by runs of this host whose process is gone (SIGKILL, power loss). A
    previous output moved aside by a commit cut short is put back if nothing took its place."""
    pattern = re.compile(re.escape(f".{out.name}{TMP_MARK}") + r"(\d+)-([0-9a-f]{8})(-old)?")
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if not m or not m[2].startswith(_HOST) or _alive(int(m[1])):
            continue
        path = out.parent / name
        if m[3] and not os.path.lexists(out):
            with suppress(OSError):
                place(path, out, path.is_dir() and not path.is_symlink())
            continue  # put back, or left alone: never delete what may be the only copy
        remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):
        return False
    return pid > 0


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with suppress(FileNotFoundError):
            path.unlink()


def remove_dirs(made: list[Path]) -> None:
    """Remove the parent directories a run created (innermost first), as long as they are empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break
