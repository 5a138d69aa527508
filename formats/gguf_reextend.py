"""GGUF → GGUF re-extension without re-quantizing: every weight's bytes are copied unchanged, whatever its quant
type; only the rope metadata and rope tensors are replaced by those of the new spec (formats/gguf_rope.py).

Like gguf's gguf_new_metadata script: the old key/values are copied (less the rope keys), all tensor infos are
registered, then the GGUF writer (formats/gguf_writer.py) writes the tensors in order. Each is read from the file by
offset in reads of COPY_BYTES rather than through the reader's memory map, so memory stays a few reads whatever the
model size. The reader is the Source's own (opened once per conversion). The source must carry no rope scaling
unless the caller decided to replace it (Source.base_rope checks this). A source that is itself a ropeconvert export
must still match its seal: a changed file is refused, naming it, before anything is written. A split source
(formats/gguf_split.py) is written as one merged file, each tensor read by offset from its own shard.
"""
from __future__ import annotations

import errno
import os
from contextlib import ExitStack
from pathlib import Path

from gguf import GGUFValueType, Keys

from ropeconvert.convert.spec import RopeSpec
from ropeconvert.errors import InputError
from ropeconvert.formats.gguf_integrity import check_seal
from ropeconvert.formats.gguf_keys import PREFIX, RopeTensors
from ropeconvert.formats.gguf_read import field
from ropeconvert.formats.gguf_rope import GgufRope, gguf_rope, rope_key_names
from ropeconvert.formats.gguf_split import file_of
from ropeconvert.formats.gguf_writer import GgufExport
from ropeconvert.formats.safe_io import open_regular
from ropeconvert.formats.source import Source, resolve

COPY_BYTES = 16 << 20  # one read of a large tensor: memory stays a few of these whatever the tensor size


def reextend_gguf(src: Path | Source, spec: RopeSpec, out: Path, *, static: bool = False, force: bool = False,
                  progress: bool = True, provenance: dict | None = None,
                  rope: GgufRope | None = None) -> tuple[Path, list[str]]:
    """Write `src` with `spec`'s rope to `out`; tensor data byte-identical. Returns the final path and notes.
    `rope`: gguf_rope's answer when the caller has it, with the source's seal checked (formats/gguf.py check_gguf)."""
    source = src if isinstance(src, Source) else resolve(str(src), progress=progress)
    reader, arch = source.reader, source.arch
    if rope is None:
        rope = gguf_rope(spec, arch, static)
        check_source(source)
    tensors = [t for t in reader.tensors if t.name not in RopeTensors.ALL]
    # a split source: each tensor's bytes are at its offset in its own shard (formats/gguf_split.py); one file else
    files = source.files
    size = {p: p.stat().st_size for p in files}
    for t in tensors:
        if t.data_offset + t.n_bytes > size[file_of(reader, t, source.path)]:
            raise InputError(f"{file_of(reader, t, source.path)}: tensor {t.name!r} runs past the end of the file",
                             "the file is truncated; re-download it")
    with ExitStack() as inputs:  # opened before the output: a read failure is not "cannot write"
        fin = {p: inputs.enter_context(open_regular(p, "GGUF source")) for p in files}
        path = _copy(source, spec, rope, tensors, fin, out, provenance, force, progress)
    notes = list(rope.notes)
    if len(files) > 1:
        notes.append(f"the source is a split GGUF ({len(files)} shards from {files[0].name}): written as ONE merged "
                     "GGUF, every tensor's bytes copied from its shard without re-quantizing")
    return path, notes


def _copy(source: Source, spec: RopeSpec, rope: GgufRope, tensors: list, fin: dict, out: Path,
          provenance: dict | None, force: bool, progress: bool) -> Path:
    """The output: the source's keys less the rope's, the new rope, then every tensor's bytes from its file."""
    reader, arch = source.reader, source.arch
    dropped = rope_key_names(arch)
    with GgufExport(out, arch, provenance, force=force, sources=tuple(fin), endianess=reader.endianess) as gx:
        w = gx.keys
        for f in reader.fields.values():
            if f.name.startswith(("GGUF.", PREFIX)) or f.name == Keys.General.ARCHITECTURE or f.name in dropped:
                continue  # written by the writer itself, or replaced below
            if f.name == Keys.General.ALIGNMENT:
                w.add_custom_alignment(int(f.contents()))  # keeps the writer's padding in step with the key
                continue
            kind = f.types[0]
            sub = f.types[-1] if kind == GGUFValueType.ARRAY else None
            w.add_key_value(f.name, field(reader, f.name), kind, sub_type=sub)
        gx.add_rope(rope, spec)
        for t in tensors:
            src = file_of(reader, t, source.path)
            gx.add_tensor(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type,
                          data=lambda t=t, src=src: _read_bytes(fin[src], t, src))
        gx.write(progress, desc="copy GGUF tensors")
    return gx.path


def check_source(source: Source) -> None:
    """A source that is a ropeconvert export must still be the file it sealed: its changed bytes would be copied
    into a fresh seal and pass every later verify. A split's first shard may carry the seal of the file that was
    split: it covers that one file, not the shards, so it cannot be checked here."""
    if len(source.files) == 1:
        check_source_seal(source.path)


def check_source_seal(src: Path) -> None:
    if check_seal(src)[0] is False:
        raise InputError(f"the source {src} is a ropeconvert export whose bytes no longer match its seal (the file "
                         "changed after it was written)", f"restore or re-export it; `ropeconvert verify {src}` "
                         "shows what differs")


def _read_bytes(fin, t, src: Path):
    """One tensor's bytes, exactly as stored, in reads of at most COPY_BYTES."""
    left = t.n_bytes
    try:
        fin.seek(t.data_offset)
        while left:
            raw = fin.read(min(left, COPY_BYTES))
            if not raw:
                break
            left -= len(raw)
            yield raw
    except OSError as e:  # inside the output's block, where an OSError would read as a write failure
        raise InputError(f"cannot read {src} ({os.strerror(e.errno or errno.EIO)})", "check the disk or the file") from None
    if left:
        raise InputError(f"tensor {t.name!r} is cut short", "the file is truncated; re-download it")
