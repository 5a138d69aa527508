"""Integrity: the manifest an HF export carries (sha256 per file, source, spec) and `ropeconvert verify`.

The manifest lives in `ropeconvert.json` beside the weights. Weight hashes are computed while the weights are copied
(a second thread hashes the chunks the copy just read, so hashing costs no extra pass). Hard-linked weights (`--link`)
share their bytes with the source, so their hash is left null and `verify` compares them with the source instead.
The manifest is read through formats/export.py (the one reader of an export); `ropeconvert verify` enters through
formats/inspect.py `verify`, which sends an HF export here and a GGUF to formats/gguf_integrity.py.
"""
from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import show
from ropeconvert.formats.export import MANIFEST_FILE, Export, read_manifest, same_rope
from ropeconvert.formats.safe_io import open_regular, sha256_file  # noqa: F401  (sha256_file: re-exported)

REPORT_FILES = ("report.json", "report.md", "README.md", "selection.json")  # written after the export; not part of the manifest
CHUNK = 16 * 1024 * 1024


def copy_and_hash(pairs: list[tuple[Path, Path]], on_chunk: Callable[[int], None] | None = None) -> list[str]:
    """Copy each (src, dst) and return the sha256 of each file's bytes, using both cores: the kernel copies the files
    one after another (copy_file_range, as cp does, no user-space buffers) while two threads hash the sources
    (hashlib drops the GIL), so a sharded export costs about its largest shard's hash, not the sum of them all."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
    try:
        digests = [pool.submit(sha256_file, src) for src, _ in pairs]
        for src, dst in pairs:
            copy_file(src, dst, on_chunk)
        # a failed hash (e.g. the source vanished after its copy): hash what was written instead
        return [d.result() if d.exception() is None else sha256_file(dst) for d, (_, dst) in zip(digests, pairs)]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def copy_file(src: Path, dst: Path, on_chunk: Callable[[int], None] | None = None) -> None:
    with open_regular(src) as fin, open(dst, "wb") as fout:
        _kernel_copy(fin, fout, on_chunk)


def _kernel_copy(fin: BinaryIO, fout: BinaryIO, on_chunk: Callable[[int], None] | None) -> None:
    size = os.fstat(fin.fileno()).st_size
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), min(CHUNK * 4, size - done))
            if n == 0:
                break
            done += n
            if on_chunk:
                on_chunk(n)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
            raise
        while chunk := fin.read(CHUNK):  # filesystems without copy_file_range: a plain streamed copy
            fout.write(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    if done and done != size:
        raise OSError(errno.EIO, f"copy stopped after {done} of {size} bytes", str(fin.name))


def file_entries(export_dir: Path, known: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """{name: {size, sha256}} for every file of the export; `known` holds hashes computed during the copy."""
    entries = {}
    for path in sorted(export_dir.iterdir()):
        if not path.is_file() or path.name == MANIFEST_FILE:
            continue
        digest = known[path.name] if path.name in known else sha256_file(path)
        entries[path.name] = {"size": path.stat().st_size, "sha256": digest}
    return entries


def load_manifest(export_dir: Path) -> dict[str, Any]:
    """The manifest of an HF export, with the shape verify relies on checked (a damaged one is one line)."""
    path = Path(export_dir) / MANIFEST_FILE
    if not os.path.lexists(path):
        raise InputError(f"{export_dir} has no {MANIFEST_FILE}", "only exports written by ropeconvert can be verified")
    return _checked(read_manifest(path), path)


def _checked(data: dict[str, Any], path: Path) -> dict[str, Any]:
    fix = "the export is damaged; re-export it"
    if not isinstance(data.get("files"), dict):
        raise InputError(f"{path} has no file list", "re-export with this version of ropeconvert")
    for name, entry in data["files"].items():
        if not isinstance(entry, dict) or type(entry.get("size")) is not int or \
                not isinstance(entry.get("sha256"), (str, type(None))):
            raise InputError(f"{path}: files[{show(name)}] must be {{size: integer, sha256: string or null}}, "
                             f"got {show(entry)}", fix)
    if not isinstance(data.get("weights", []), list) or not all(isinstance(w, str) for w in data.get("weights", [])):
        raise InputError(f"{path}: weights must be a list of file names, got {show(data.get('weights'))}", fix)
    if not isinstance(data.get("source_path"), (str, type(None))):
        raise InputError(f"{path}: source_path must be a string, got {show(data['source_path'])}", fix)
    return data


def verify_hf(export_dir: Path | Export, source: Path | None = None) -> tuple[list[str], list[str]]:
    """Re-check an HF export; returns (problems, checks done). No problems means it is intact. The manifest records
    no machine path: `source` (verify --source DIR) is the directory to compare the weights with, if any."""
    from ropeconvert.formats.hf_config import base_rope_from_config, spec_from_hf_config

    export = export_dir if isinstance(export_dir, Export) else Export.open(export_dir)
    export_dir = export.path
    if export.manifest is None:
        raise InputError(f"{export_dir} has no {MANIFEST_FILE}", "only exports written by ropeconvert can be verified")
    manifest = _checked(export.manifest, export_dir / MANIFEST_FILE)
    problems, done = [], []
    source_dir = Path(source) if source is not None else None
    for name, entry in manifest["files"].items():
        path = export_dir / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"{name}: missing")
            continue
        if path.stat().st_size != entry.get("size"):
            problems.append(f"{name}: size {path.stat().st_size} ≠ {entry.get('size')} in the manifest")
            continue
        digest = sha256_file(path)
        if entry.get("sha256") is not None and digest != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (the file changed after export)")
        if name in manifest.get("weights", []) and source_dir is not None and (source_dir / name).is_file():
            if sha256_file(source_dir / name) != digest:
                problems.append(f"{name}: not byte-identical to the source's {name}")
            else:
                done.append(f"{name}: byte-identical to the source")
        done.append(f"{name}: sha256 ok" if entry.get("sha256") else
                    f"{name}: hard-linked weights (--link), not hashed" + (", compared with the source" if source_dir else
                                                                          "; pass --source DIR to compare them"))
    extra = sorted(p.name for p in export_dir.iterdir() if p.is_file() and p.name not in manifest["files"]
                   and p.name != MANIFEST_FILE and p.name not in REPORT_FILES and not p.name.endswith(".png"))
    problems += [f"{name}: not in the manifest" for name in extra]
    try:
        expected = export.spec
        if expected is None:
            raise InputError(f"{MANIFEST_FILE} records no spec")
        config = export.config
        written = spec_from_hf_config(config, original_context=expected.original_context)
        if written is None:  # plain RoPE in config.json (static NTK): compare the base it carries
            written = base_rope_from_config(config, expected.original_context)
    except Exception as e:  # a damaged config or spec is a finding, not a crash
        problems.append(f"config.json rope could not be read back: {' '.join(str(e).split())[:200]}")
    else:
        if expected.position_map is not None:  # DPE / Self-Extend: the `dpe` block and index map carry it
            from ropeconvert.formats.dpe_format import check_hf_export

            found = check_hf_export(export_dir, config, expected)
            problems += found
            if not found:
                done.append(f"config.json `dpe` block and index map equal the spec's {expected.method} map")
        elif not same_rope(expected, written):
            problems.append("config.json rope differs from the spec in the manifest")
        else:
            done.append("config.json rope equals the spec")
    return problems, done
