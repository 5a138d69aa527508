"""Integrity of a GGUF export: provenance keys, a sha256 of the tensor data sealed into the file itself, and
`ropeconvert verify FILE.gguf`.

A GGUF travels as one file, so its manifest lives inside it: `ropeconvert.spec` (the RopeSpec, written by
gguf_rope.add_rope), `ropeconvert.source*` (where it came from) and `ropeconvert.tensor_data_sha256`. The digest key
is written as a 64-character placeholder with the rest of the metadata, and once every tensor is on disk the
placeholder's bytes are overwritten in place with the sha256 of the tensor-data section — same length, so no offset
moves. Verify re-hashes that section, checks the rope keys and tensors against what gguf_rope prescribes for the
stored spec, and, for a re-extension, compares every tensor with the source file's bytes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from ropeconvert.formats.gguf_read import ROPE_TENSORS, field, gguf_arch, open_gguf

DIGEST_KEY = "ropeconvert.tensor_data_sha256"
PLACEHOLDER = "0" * 64
PROVENANCE_KEYS = ("source", "source_name", "source_revision", "source_license", "source_path")
CHUNK = 16 * 1024 * 1024


def add_provenance(writer: GGUFWriter, provenance: dict[str, Any] | None) -> None:
    """Where the export came from (read by the model card and verify), plus the digest placeholder."""
    for key in PROVENANCE_KEYS:
        value = (provenance or {}).get(key)
        if value:
            writer.add_string(f"ropeconvert.{key}", str(value))
    writer.add_string(DIGEST_KEY, PLACEHOLDER)


def tensor_data_digest(path: Path, data_offset: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(data_offset)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def seal(path: Path) -> str:
    """Hash the tensor data of a freshly written GGUF and write the digest over the placeholder."""
    reader = open_gguf(path)
    f = reader.fields[DIGEST_KEY]
    value_at = f.offset + 8 + len(DIGEST_KEY) + 4 + 8  # key length u64, key, type u32, string length u64
    digest = tensor_data_digest(path, reader.data_offset)
    del reader  # release the memory map before writing
    with open(path, "r+b") as out:
        out.seek(value_at)
        if out.read(64) != PLACEHOLDER.encode():
            raise RuntimeError(f"{path}: digest placeholder not where expected")  # a bug, not bad input
        out.seek(value_at)
        out.write(digest.encode())
    return digest


def verify_gguf(path: Path) -> tuple[list[str], list[str]]:
    """(problems, checks done) for a GGUF export; no problems means intact."""
    from ropeconvert.formats.gguf_rope import gguf_rope, read_rope, spec_from_gguf

    reader = open_gguf(path)
    arch = gguf_arch(reader)
    problems, done = [], []
    size = path.stat().st_size
    short = [t.name for t in reader.tensors if t.data_offset + t.n_bytes > size]
    problems += [f"tensor {n}: data runs past the end of the file" for n in short]
    stored = field(reader, DIGEST_KEY)
    if stored is None:
        problems.append(f"no {DIGEST_KEY}: not a ropeconvert export (or made by an older version)")
    elif tensor_data_digest(path, reader.data_offset) != stored:
        problems.append("tensor data sha256 differs from the one sealed in the file (the file changed after export)")
    else:
        done.append("tensor data sha256 ok")
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
