"""Integrity of a GGUF export: provenance keys, a sha256 of the whole file sealed into the file itself, and
`ropeconvert verify FILE.gguf`.

A GGUF travels as one file, so its manifest lives inside it: `ropeconvert.spec` (the RopeSpec, written by
gguf_rope.add_rope), `ropeconvert.source*` (where it came from) and the seal `ropeconvert.sha256`. The seal is the
first key after the architecture, written as a 64-character placeholder; once every tensor is on disk the
placeholder's bytes are overwritten in place with the sha256 of the whole file as it was with the placeholder in it
(magic, version, counts, every key, tensor infos and tensor data) — same length, so no offset moves. Sealing and
checking find the key by scanning the head of the file rather than parsing it (parsing a 49k-token vocabulary takes
seconds), so a file whose header no longer parses is still reported as changed. Exports from before this seal carry
`ropeconvert.tensor_data_sha256`, a hash of the bytes after that key only (not the magic, version, counts and
architecture before it): verify still checks those and says the seal is of the old kind. Verify also checks the rope
keys and tensors against what gguf_rope prescribes for the stored spec and, for a re-extension, compares every
tensor with the source file's bytes; a re-extension refuses a source whose own seal fails (check_seal).
"""
from __future__ import annotations

import hashlib
import json
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from ropeconvert.errors import InputError, RopeConvertError
from ropeconvert.formats.export import BadSpec, Export
from ropeconvert.formats.gguf_keys import PROVENANCE, Keys, RopeTensors
from ropeconvert.formats.gguf_read import field, gguf_arch, open_gguf
from ropeconvert.formats.gguf_split import file_of, files_of, sha256_files, shard_paths
from ropeconvert.formats.safe_io import open_regular

PLACEHOLDER = "0" * 64
# where the export came from: identity only (Hub id and revision, or a local file's name and sha256), never a path
CHUNK = 16 * 1024 * 1024
HEAD_SCAN = 1 << 20  # the digest key comes right after the architecture: well inside the first MiB


def add_provenance(writer: GGUFWriter, provenance: dict[str, Any] | None) -> None:
    """The digest placeholder (call this first, so the digest covers every later key), then where the export came
    from (read by the model card and verify)."""
    writer.add_string(Keys.SHA256, PLACEHOLDER)
    for name, key in PROVENANCE.items():
        value = (provenance or {}).get(name)
        if value:  # the licence is a dict (id, name, link): JSON, so the card can read it back
            writer.add_string(key, json.dumps(value) if isinstance(value, dict) else str(value))


def _digest_at(path: Path, key: str = Keys.SHA256) -> int | None:
    """File offset of the digest value: the key (u64 length + bytes), type string (u32 8), value length u64 64."""
    marker = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 8, 64)
    with open_regular(path, "GGUF file") as f:
        head = f.read(HEAD_SCAN)
    pos = head.find(marker)
    return None if pos < 0 else pos + len(marker)


def _hash_after(path: Path, start: int, h=None, end: int | None = None):
    """sha256 (fed into `h`, or a new one) of the file's bytes from `start` to `end` (default: its end as it is now);
    the hashlib object is returned, so more can follow."""
    h = h or hashlib.sha256()
    with open_regular(path, "GGUF file") as f:
        f.seek(start)
        left = None if end is None else end - start
        while chunk := f.read(CHUNK if left is None else min(CHUNK, left)):
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h


def seal(path: Path) -> str:
    """Hash a freshly written GGUF (placeholder in place) and write the digest over the placeholder."""
    value_at, hasher = digest_header(path)
    digest = hasher.hexdigest()
    write_digest(path, value_at, digest)
    return digest


def digest_header(path: Path, hash_prefix: bool = True):
    """(offset of the digest value, sha256 of the file from its first byte, placeholder included, up to its end as it
    is now — None without hash_prefix)."""
    value_at = _digest_at(path)
    with open(path, "rb") as f:
        if value_at is None or (f.seek(value_at), f.read(64))[1] != PLACEHOLDER.encode():
            raise RuntimeError(f"{path}: digest placeholder not found")  # a bug in the writer, not bad input
    return value_at, _hash_after(path, 0) if hash_prefix else None


def check_seal(path: Path) -> tuple[bool | None, bool]:
    """(intact, legacy): whether the file's bytes are those its ropeconvert seal was made from (None: it carries no
    seal), and whether the seal is of the old kind (not covering the header bytes before it). Reads raw bytes only,
    so a file whose header no longer parses is still reported as changed."""
    for key, legacy in ((Keys.SHA256, False), (Keys.LEGACY_SHA256, True)):
        value_at = _digest_at(path, key)
        if value_at is None:
            continue
        with open_regular(path, "GGUF file") as f:
            f.seek(value_at)
            stored = f.read(64)
        if legacy:
            actual = _hash_after(path, value_at + 64)
        else:  # the bytes before the value, the placeholder the hash was taken with, then the rest
            actual = _hash_after(path, value_at + 64, _prefix_with_placeholder(path, value_at))
        return actual.hexdigest().encode() == stored, legacy
    return None, False


def _prefix_with_placeholder(path: Path, value_at: int):
    h = _hash_after(path, 0, end=value_at)
    h.update(PLACEHOLDER.encode())
    return h


def write_digest(path: Path, value_at: int, digest: str) -> None:
    with open(path, "r+b") as out:
        out.seek(value_at)
        out.write(digest.encode())


def write_seal(path: Path, digest: str) -> None:
    """Write `digest` (the sha256 of the file as written, placeholder in) over the placeholder: the GGUF writer
    hashes while it writes (formats/gguf_writer.py), so the file is not read back."""
    write_digest(path, digest_header(path, hash_prefix=False)[0], digest)


def verify_gguf(path: Path | Export, source: Path | None = None) -> tuple[list[str], list[str]]:
    """(problems, checks done) for a GGUF export (a path, or an Export already open: its reader is reused); no
    problems means intact. A re-extended export's tensor bytes are compared with `source`, or with the embedded
    model when that is the source it names."""
    export = path if isinstance(path, Export) else Export("gguf", Path(path))  # a damaged magic is a change too
    path = export.path
    problems, done = [], []
    intact, legacy = check_seal(path)  # first, from the raw bytes: it holds even when the header no longer parses
    if intact is None:
        problems.append(f"no {Keys.SHA256} seal: not a ropeconvert export, or its header was damaged")
    elif not intact:
        problems.append("sha256 differs from the one sealed in the file (header, metadata or tensor data changed "
                        "after export)")
    elif legacy:
        done.append("sha256 of metadata and tensor data ok (an export from an older ropeconvert: its seal, "
                    f"{Keys.LEGACY_SHA256}, does not cover the magic, version, counts and architecture before it; "
                    "re-export for a whole-file seal)")
    else:
        done.append("sha256 of metadata and tensor data ok (the whole file, header included)")
    try:
        reader = export.reader
    except InputError as e:
        return problems + [f"the file no longer reads as GGUF: {e.problem}"], done
    named = field(reader, Keys.Source.NAME)
    if source is None and isinstance(named, str):
        from ropeconvert.formats.source import packaged_path

        source = packaged_path(named)  # the embedded and packaged models: local sources every install has
    try:
        arch = gguf_arch(reader)
        spec = export.spec
    except BadSpec:
        return problems + [f"its {Keys.SPEC} metadata is no longer a valid spec"], done
    except RopeConvertError as e:  # an edited architecture or spec key: a change like any other
        return problems + [f"the file no longer reads as a ropeconvert export: {e.problem}"], done
    if spec is None:
        problems.append(f"no {Keys.SPEC} key: cannot check the rope")
    else:
        problems, done = _check_rope(export, spec, arch, problems, done)
    if source is not None:  # `verify --source FILE`: the GGUF it was re-extended from (the export records no path)
        recorded = field(reader, Keys.Source.SHA256)
        if recorded and sha256_files(files_of(Path(source), lambda: open_gguf(source))) != recorded:  # a split: all shards
            problems.append(f"{Path(source).name} is not the file this export was made from (sha256 differs)")
        else:
            found = _compare_with_source(reader, path, Path(source))
            problems += found
            if not found:
                done.append(f"tensor bytes identical to the source {Path(source).name}")
    return problems, done


def _check_rope(export: Export, spec, arch: str, problems: list[str], done: list[str]) -> tuple[list[str], list[str]]:
    """The rope keys and tensors as written against what gguf_rope prescribes for the spec, key by key (so the
    problem names the key that changed; formats/export.py `same_rope` compares specs, not keys)."""
    from ropeconvert.formats.gguf_rope import gguf_rope

    try:
        expected = gguf_rope(spec, arch, static=spec.dynamic_factor is not None)
        written = export.rope
    except RopeConvertError as e:  # e.g. an architecture edited into one that cannot carry this rope
        return problems + [f"the rope cannot be checked: {e.problem}"], done
    except (TypeError, ValueError, ZeroDivisionError):  # a rope key removed or retyped
        return problems + ["the rope keys no longer read as numbers (a key removed or retyped)"], done
    diffs = [k for k in ("context_length", "original_context", "freq_base", "dimension_count", "scaling_type",
                         "scaling_factor", "attn_factor") if not _same(getattr(expected, k), getattr(written, k))]
    diffs += [n for n in set(expected.tensors) | set(written.tensors)
              if n not in expected.tensors or n not in written.tensors
              or not np.array_equal(expected.tensors[n], written.tensors[n])]
    if diffs:
        return problems + [f"rope metadata differs from the spec: {', '.join(sorted(diffs))}"], done
    return problems, done + ["rope keys and tensors equal the spec"]


def _compare_with_source(reader, path: Path, source: Path) -> list[str]:
    source_reader = open_gguf(source)  # a split source: each tensor is read from its own shard (file_of)
    src = {t.name: t for t in source_reader.tensors if t.name not in RopeTensors.ALL}
    out = []
    with open_regular(path, "GGUF file") as a, ExitStack() as files:
        b = {p: files.enter_context(open_regular(p, "GGUF source")) for p in shard_paths(source_reader, source)}
        for t in reader.tensors:
            if t.name in RopeTensors.ALL:
                continue
            s = src.get(t.name)
            if s is None or s.n_bytes != t.n_bytes:
                out.append(f"tensor {t.name}: not in the source, or a different size")
                continue
            a.seek(t.data_offset)
            fb = b[file_of(source_reader, s, source)]
            fb.seek(s.data_offset)
            if a.read(t.n_bytes) != fb.read(s.n_bytes):
                out.append(f"tensor {t.name}: bytes differ from the source")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a))  # keys are stored as float32
    return a == b
