"""Integrity of a GGUF export: provenance keys, a sha256 of the tensor data sealed into the file itself, and
`ropeconvert verify FILE.gguf`.

A GGUF travels as one file, so its manifest lives inside it: `ropeconvert.spec` (the RopeSpec, written by
gguf_rope.add_rope), `ropeconvert.source*` (where it came from) and `ropeconvert.tensor_data_sha256`. The digest key
is the first key after the architecture, written as a 64-character placeholder; once every tensor is on disk the
placeholder's bytes are overwritten in place with the sha256 of everything after it (all other metadata, tensor
infos and tensor data) — same length, so no offset moves. Sealing and checking find the key by scanning the head of
the file rather than parsing it (parsing a 49k-token vocabulary takes seconds). Verify also checks the rope keys
and tensors against what gguf_rope prescribes for the stored spec and, for a re-extension, compares every tensor
with the source file's bytes.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from ropeconvert.formats.gguf_read import ROPE_TENSORS, field, gguf_arch, open_gguf

DIGEST_KEY = "ropeconvert.tensor_data_sha256"
PLACEHOLDER = "0" * 64
PROVENANCE_KEYS = ("source", "source_name", "source_revision", "source_license", "source_path")
CHUNK = 16 * 1024 * 1024
HEAD_SCAN = 1 << 20  # the digest key comes right after the architecture: well inside the first MiB


def add_provenance(writer: GGUFWriter, provenance: dict[str, Any] | None) -> None:
    """The digest placeholder (call this first, so the digest covers every later key), then where the export came
    from (read by the model card and verify)."""
    writer.add_string(DIGEST_KEY, PLACEHOLDER)
    for key in PROVENANCE_KEYS:
        value = (provenance or {}).get(key)
        if value:  # the licence is a dict (id, name, link): JSON, so the card can read it back
            writer.add_string(f"ropeconvert.{key}", json.dumps(value) if isinstance(value, dict) else str(value))


def _digest_at(path: Path) -> int | None:
    """File offset of the digest value: the key (u64 length + bytes), type string (u32 8), value length u64 64."""
    key = DIGEST_KEY.encode()
    marker = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 64)
    with open(path, "rb") as f:
        head = f.read(HEAD_SCAN)
    pos = head.find(marker)
    return None if pos < 0 else pos + len(marker)


def _hash_after(path: Path, start: int):
    """sha256 of the file's bytes from `start` to its end as it is now (a hashlib object, so more can follow)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def seal(path: Path) -> str:
    """Hash a freshly written GGUF after its digest key and write the digest over the placeholder."""
    value_at, hasher = digest_header(path)
    digest = hasher.hexdigest()
    write_digest(path, value_at, digest)
    return digest


def digest_header(path: Path):
    """(offset of the digest value, sha256 of every byte after the placeholder up to the end of the file as it is
    now). The GGUF exporter calls this after the tensor infos and feeds the tensor data to the hasher as it writes
    it, so the data is never read back."""
    value_at = _digest_at(path)
    with open(path, "rb") as f:
        if value_at is None or (f.seek(value_at), f.read(64))[1] != PLACEHOLDER.encode():
            raise RuntimeError(f"{path}: digest placeholder not found")  # a bug in the writer, not bad input
    return value_at, _hash_after(path, value_at + 64)


def write_digest(path: Path, value_at: int, digest: str) -> None:
    with open(path, "r+b") as out:
        out.seek(value_at)
        out.write(digest.encode())


def verify_gguf(path: Path) -> tuple[list[str], list[str]]:
    """(problems, checks done) for a GGUF export; no problems means intact."""
    from ropeconvert.formats.gguf_rope import gguf_rope, read_rope, spec_from_gguf

    reader = open_gguf(path)
    arch = gguf_arch(reader)
    problems, done = [], []
    size = path.stat().st_size
    short = [t.name for t in reader.tensors if t.data_offset + t.n_bytes > size]
    problems += [f"tensor {n}: data runs past the end of the file" for n in short]
    stored, value_at = field(reader, DIGEST_KEY), _digest_at(path)
    if stored is None or value_at is None:
        problems.append(f"no {DIGEST_KEY}: not a ropeconvert export (or made by an older version)")
    elif _hash_after(path, value_at + 64).hexdigest() != stored:
        problems.append("sha256 differs from the one sealed in the file (metadata or tensor data changed after export)")
    else:
        done.append("sha256 of metadata and tensor data ok")
    spec = spec_from_gguf(reader)
    if spec is None:
        problems.append("no ropeconvert.spec key: cannot check the rope")
    else:
        expected = gguf_rope(spec, arch, static=spec.dynamic_factor is not None)
        written = read_rope(reader)
        diffs = [k for k in ("context_length", "original_context", "freq_base", "dimension_count", "scaling_type",
                             "scaling_factor", "attn_factor") if not _same(getattr(expected, k), getattr(written, k))]
        diffs += [n for n in set(expected.tensors) | set(written.tensors)
                  if n not in expected.tensors or n not in written.tensors
                  or not np.array_equal(expected.tensors[n], written.tensors[n])]
        if diffs:
            problems.append(f"rope metadata differs from the spec: {', '.join(sorted(diffs))}")
        else:
            done.append("rope keys and tensors equal the spec")
    source = field(reader, "ropeconvert.source_path")
    if source and Path(source).is_file() and Path(source).suffix == ".gguf":
        problems += _compare_with_source(reader, path, Path(source))
        if not problems:
            done.append(f"tensor bytes identical to the source {source}")
    return problems, done


def _compare_with_source(reader, path: Path, source: Path) -> list[str]:
    src = {t.name: t for t in open_gguf(source).tensors if t.name not in ROPE_TENSORS}
    out = []
    with open(path, "rb") as a, open(source, "rb") as b:
        for t in reader.tensors:
            if t.name in ROPE_TENSORS:
                continue
            s = src.get(t.name)
            if s is None or s.n_bytes != t.n_bytes:
                out.append(f"tensor {t.name}: not in the source, or a different size")
                continue
            a.seek(t.data_offset)
            b.seek(s.data_offset)
            if a.read(t.n_bytes) != b.read(s.n_bytes):
                out.append(f"tensor {t.name}: bytes differ from the source")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a))  # keys are stored as float32
    return a == b
