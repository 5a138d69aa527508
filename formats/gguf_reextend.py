"""GGUF → GGUF re-extension without re-quantizing: every weight's bytes are copied unchanged, whatever its quant
type; only the rope metadata and rope tensors are replaced by those of the new spec (formats/gguf_rope.py).

Like gguf's gguf_new_metadata script: the old key/values are copied (less the rope keys), all tensor infos are
registered, then tensors are written one at a time. Each tensor is read from the file by offset into its own
buffer rather than through the reader's memory map, so peak memory stays about one tensor. The source must carry
no rope scaling unless the caller decided to replace it (pipeline.base_rope checks this). A source that is itself a
ropeconvert export must still match its seal: a changed file is refused, naming it, before anything is written.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from gguf import GGUFValueType, GGUFWriter, Keys
from tqdm import tqdm

from ropeconvert.convert.spec import RopeSpec
from ropeconvert.errors import InputError
from ropeconvert.formats.gguf_read import ROPE_TENSORS, field, gguf_arch, open_gguf
from ropeconvert.formats.gguf_integrity import add_provenance, check_seal, seal
from ropeconvert.formats.safe_io import open_regular
from ropeconvert.formats.gguf_rope import add_rope, gguf_rope, rope_key_names
from ropeconvert.formats.output import atomic_output


def reextend_gguf(src: Path, spec: RopeSpec, out: Path, *, static: bool = False, force: bool = False,
                  progress: bool = True, provenance: dict | None = None) -> tuple[Path, list[str]]:
    """Write `src` with `spec`'s rope to `out`; tensor data byte-identical. Returns the final path and notes."""
    reader = open_gguf(src)
    arch = gguf_arch(reader)
    rope = gguf_rope(spec, arch, static)
    dropped = rope_key_names(arch)
    tensors = [t for t in reader.tensors if t.name not in ROPE_TENSORS]
    size = Path(src).stat().st_size
    for t in tensors:
        if t.data_offset + t.n_bytes > size:
            raise InputError(f"{src}: tensor {t.name!r} runs past the end of the file", "the file is truncated; re-download it")
    check_source_seal(src)
    notes = list(rope.notes)
    fin = open_regular(src, "GGUF source")  # opened before the output: a read failure is not "cannot write"
    with fin, atomic_output(out, force=force, directory=False, sources=(src,)) as tmp:
        writer = GGUFWriter(str(tmp), arch, endianess=reader.endianess)
        try:
            add_provenance(writer, provenance)  # first: the sealed digest covers every key after it
            for f in reader.fields.values():
                if f.name.startswith(("GGUF.", "ropeconvert.")) or f.name == Keys.General.ARCHITECTURE or f.name in dropped:
                    continue  # written by GGUFWriter itself, or replaced below
                if f.name == Keys.General.ALIGNMENT:
                    writer.add_custom_alignment(int(f.contents()))  # keeps the writer's padding in step with the key
                    continue
                kind = f.types[0]
                sub = f.types[-1] if kind == GGUFValueType.ARRAY else None
                writer.add_key_value(f.name, field(reader, f.name), kind, sub_type=sub)
            add_rope(writer, rope, spec)
            for name, arr in rope.tensors.items():
                writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes)
            for t in tensors:
                writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for arr in rope.tensors.values():
                writer.write_tensor_data(arr)
            for t in tqdm(tensors, desc="copy GGUF tensors", unit="tensor", disable=not progress):
                writer.write_tensor_data(_read_bytes(fin, t, src), tensor_endianess=reader.endianess)
        finally:
            writer.close()
        seal(tmp)
        final = Path(out).expanduser().absolute()
    return final, notes


def check_source_seal(src: Path) -> None:
    """A source that is a ropeconvert export must still be the file it sealed: its changed bytes would be copied
    into a fresh seal and pass every later verify."""
    if check_seal(src)[0] is False:
        raise InputError(f"the source {src} is a ropeconvert export whose bytes no longer match its seal (the file "
                         "changed after it was written)", f"restore or re-export it; `ropeconvert verify {src}` "
                         "shows what differs")


def _read_bytes(fin, t, src: Path) -> np.ndarray:
    """One tensor's bytes, exactly as stored, shaped and typed like the reader's view of them."""
    try:
        fin.seek(t.data_offset)
        raw = fin.read(t.data.nbytes)
    except OSError as e:  # inside the output's block, where an OSError would read as a write failure
        raise InputError(f"cannot read {src} ({os.strerror(e.errno or errno.EIO)})", "check the disk or the file") from None
    if len(raw) != t.data.nbytes:
        raise InputError(f"tensor {t.name!r} is cut short", "the file is truncated; re-download it")
    return np.frombuffer(raw, dtype=t.data.dtype).reshape(t.data.shape)
