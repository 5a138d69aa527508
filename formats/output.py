"""Atomic outputs: everything is written under a temporary name beside the target and renamed at the end.

Rules (issue 23): an output never is, contains or lies inside a source; `--force` replaces only a previous ropeconvert
export of the same kind (an HF directory with its manifest, a GGUF carrying ropeconvert's keys) or an empty entry; the final rename never replaces what another process put there meanwhile (formats/output_commit.py);
outputs written inside `output_group()` (`--to both`) are put in place together or not at all. Missing parent
directories are made as `mkdir -p` would and removed again if the run fails. Temporary names carry the writer's PID
(`.NAME.ropeconvert-tmp-PID-XXXXXXXX`), so a later run sweeps those whose process is gone.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ropeconvert.errors import OutputError
from ropeconvert.formats.output_commit import (TEMP_EXTRA, TMP_MARK, Pending, commit, remove_dirs, replaceable,
                                               sweep_stale, temp_name)
from ropeconvert.signals import deferred

__all__ = ["TMP_MARK", "atomic_output", "check_output", "output_group"]
_GROUP: list[Pending] | None = None  # the open output_group, if any


def check_output(out: Path, force: bool, *, directory: bool | None = None, sources: Iterable[Path] = ()) -> Path:
    """Refuse early (before any work) an `out` that cannot or must not be written; returns it absolute.
    `directory`: the output is an HF directory (True) or a file (False); `sources`: what the run reads."""
    text = str(out)
    out = Path(out).expanduser()
    if out.name in ("", ".", ".."):  # typer turns `-o ''` into "."
        raise OutputError(f"the output path {text!r} is not a name for a new export (an empty path, '.', '..' or '/')",
                          "give the export its own name, e.g. --out ./model-yarn-16k")
    # the parent with symlinks and '..' resolved (as the kernel will), the last component as given: a symlink there
    # is refused below rather than followed
    out = Path(os.path.realpath(out.parent)) / out.name
    ancestor = out.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"output directory {out.parent} does not exist and cannot be created ({ancestor} is "
                          f"{'a dangling symlink' if ancestor.is_symlink() else 'not a directory'})",
                          "choose another --out")
    _check_name_length(out, ancestor)
    _check_not_source(out, sources)
    if ancestor == out.parent:
        sweep_stale(out)  # temporaries of runs that died (SIGKILL) before cleaning up
    if out.is_symlink():
        target = os.readlink(out)
        raise OutputError(f"{out} is a symlink (to {target}{', which does not exist' if not out.exists() else ''})",
                          "--out must be a real path: pass the path it should point to, or remove the link")
    if out.exists():
        if not force:
            raise OutputError(f"{out} already exists", "pass --force to replace it, or choose another --out")
        why = replaceable(out, directory)
        if why:
            raise OutputError(f"{out} {why}", "--force only replaces a previous ropeconvert export; move it away or "
                              "choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {ancestor} (permission denied or read-only)", "choose another --out")
    return out


def _check_name_length(out: Path, ancestor: Path) -> None:
    try:
        limit = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(out.name))
    if size + TEMP_EXTRA > limit:
        raise OutputError(f"the output name is {size} bytes long: with the temporary name written beside it "
                          f"({TEMP_EXTRA} bytes more) it exceeds the filesystem's {limit}-byte limit",
                          f"choose a name of at most {limit - TEMP_EXTRA} bytes for --out")


def _check_not_source(out: Path, sources: Iterable[Path]) -> None:
    """Compared by device and inode, so symlinks, bind mounts and `..` cannot hide that two paths are one."""
    out_chain = _chain(out)  # out itself if it exists, then every existing parent
    out_id = out_chain[0] if out.exists() else None
    for src in sources:
        src_chain = _chain(Path(src))
        if not src_chain or not Path(src).exists():
            continue
        if out_id == src_chain[0]:
            raise OutputError(f"the output {out} is the source itself", "choose an --out outside the source")
        if src_chain[0] in out_chain:
            raise OutputError(f"the output {out} lies inside the source {src}", "choose an --out outside the source")
        if out_id is not None and out_id in src_chain:
            raise OutputError(f"the output {out} contains the source {src}", "choose an --out outside the source")


def _chain(path: Path) -> list[tuple[int, int]]:
    """(device, inode) of `path` (followed if a symlink) and of each real directory above it."""
    real = Path(os.path.realpath(Path(path).expanduser().parent)) / Path(path).name
    ids = []
    for p in (real, *real.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        ids.append((st.st_dev, st.st_ino))
    return ids


@contextmanager
def atomic_output(out: Path, *, force: bool, directory: bool, sources: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary path (a fresh directory, or a file path) that becomes `out` when the block succeeds
    (inside `output_group()`: when the group does)."""
    out = check_output(out, force, directory=directory, sources=sources)
    made = _make_parents(out.parent)
    job = Pending(temp_name(out), out, directory, force, made)
    try:
        if directory:
            job.tmp.mkdir()
        yield job.tmp
        if _GROUP is not None:
            _GROUP.append(job)
            return
        commit([job])
    except BaseException as e:
        with deferred():  # a second signal must not leave the cleanup half done
            job.discard()
        _raise_as_output_error(e, out)
        raise


@contextmanager
def output_group() -> Iterator[None]:
    """Every atomic_output finished inside the block is put in place at its end, all together: if one output
    cannot be written or committed, none is, and the previous outputs (with --force) stay as they were."""
    global _GROUP
    outer, jobs = _GROUP, []
    _GROUP = jobs
    try:
        yield
        _GROUP = outer
        commit(jobs)
    except BaseException as e:
        with deferred():
            for job in reversed(jobs):
                job.discard()
        _raise_as_output_error(e, jobs[0].out if jobs else None)
        raise
    finally:
        _GROUP = outer


def _make_parents(parent: Path) -> list[Path]:
    """`mkdir -p parent`; returns the directories this call created (outermost first), to remove on failure."""
    missing = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # another run made it meanwhile: not ours to remove
            continue
        except OSError as e:
            remove_dirs(made)
            _raise_as_output_error(e, d)
            raise
        made.append(d)
    return made


def _raise_as_output_error(e: BaseException, out: Path | None) -> None:
    """Disk full, permissions, over-long paths: the one-line OutputError the user can act on."""
    if not isinstance(e, OSError) or out is None:
        return
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = "file size limit reached" if e.errno == errno.EFBIG else "no space left on the device"
        raise OutputError(f"ran out of space writing {out} ({why} in {out.parent})",
                          "free some space or choose another --out") from None
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        raise OutputError(f"cannot write {e.filename or out} ({os.strerror(e.errno)})",
                          "choose another --out") from None
    if e.errno == errno.ENAMETOOLONG:
        raise OutputError(f"cannot write {out}: the path is too long for the filesystem",
                          "choose a shorter --out") from None

