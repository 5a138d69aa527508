"""The GGUF header walk that runs before gguf's GGUFReader sees a file.

gguf's GGUFReader trusts every count in the file: an array claiming 2^40 entries makes it loop for a minute and
then run out of memory, and it multiplies tensor dimensions in wrapping uint64. So the header (version, counts,
every key/value, every tensor info) is walked first in Python ints over a read-only map of the file, each count
and length checked against the bytes that are left before anything is allocated. Values are skipped, not read:
a 49k-token vocabulary walks in ~20 ms.
"""
from __future__ import annotations

import errno
import mmap
import os
import struct
from pathlib import Path

from ropeconvert.errors import InputError
from ropeconvert.formats.safe_io import open_regular

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType → bytes
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MAX_DIMS = 4  # GGML_MAX_DIMS
_FIX = "re-download or re-export the file"


class _Damage(Exception):
    """What is wrong with a header, in words that quote nothing from the file but short, printable names."""


def check_header(path: Path) -> None:
    """Refuse (one InputError) a GGUF whose header does not fit its own file."""
    with open_regular(path, "GGUF file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if size < 24:
                raise _Damage(f"{size} bytes, shorter than a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _Walk(buf, size).header()
        except _Damage as e:
            raise InputError(f"{path}: corrupt or truncated GGUF ({e})", _FIX) from None
        except OSError as e:
            raise InputError(f"cannot read {path} ({os.strerror(e.errno or errno.EIO)})", "check the disk or the file") from None


def printable_name(name: str, fallback: str) -> str:
    """A name from the file, quoted only when it is short and printable (never echo file contents)."""
    return repr(name) if name.isascii() and name.isprintable() and 0 < len(name) <= 80 else fallback


class _Walk:
    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos, self.order = buf, size, 0, "<"

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            raise _Damage(f"{what} runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from(self.order + "I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from(self.order + "Q", self.buf, self.take(8, what))[0]

    def name(self, what: str) -> str:
        start = self.take(self.u64(what), what)
        try:
            return self.buf[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise _Damage(f"the name of {what} is not UTF-8") from None

    def count(self, n: int, unit: int, what: str) -> None:
        """`n` items of at least `unit` bytes each must fit in what is left of the file."""
        if n > (self.size - self.pos) // unit:
            raise _Damage(f"{what} claims {n} entries, more than the {self.size - self.pos} bytes left in the file hold")

    def header(self) -> None:
        (version,) = struct.unpack_from("<I", self.buf, 4)
        if version & 0xFFFF == 0:  # written on a big-endian machine (gguf's reader takes those too)
            self.order, (version,) = ">", struct.unpack_from(">I", self.buf, 4)
        if version not in (2, 3):
            raise _Damage(f"its version field says {version}; GGUF versions 2 and 3 exist")
        self.pos = 8
        n_tensors, n_kv = self.u64("the tensor count"), self.u64("the key/value count")
        self.count(n_kv, 13, "the metadata key count")  # key length u64 + type u32 + a 1-byte value at least
        self.count(n_tensors, 24, "the tensor count")  # name length u64 + dims u32 + type u32 + offset u64
        seen: set[str] = set()
        alignment = 32
        for i in range(n_kv):
            key, label = self.unique_name("metadata key", i, seen)
            vtype = self.u32(label)
            if key == "general.alignment":  # where the tensor data starts depends on it
                if vtype != _UINT32:
                    raise _Damage("general.alignment is not a uint32")
                alignment = self.u32(label)
                if alignment == 0 or alignment & (alignment - 1):
                    raise _Damage(f"general.alignment {alignment} is not a power of two")
                continue
            self.value(vtype, label, nested=False)
        self.tensors(n_tensors, alignment)

    def value(self, vtype: int, what: str, nested: bool) -> None:
        if vtype in _SCALAR_BYTES:
            self.take(_SCALAR_BYTES[vtype], what)
        elif vtype == _STRING:
            self.take(self.u64(what), what)
        elif vtype == _ARRAY and not nested:
            sub, n = self.u32(what), self.u64(what)
            if n == 0:  # nothing follows, whatever the element type says (gguf's writer types [] as an array)
                return
            if sub in _SCALAR_BYTES:
                self.count(n, _SCALAR_BYTES[sub], what)
                self.pos += n * _SCALAR_BYTES[sub]
            elif sub == _STRING:
                self.count(n, 8, what)
                self.strings(n, what)
            else:  # llama.cpp's gguf.cpp refuses nested arrays too; refusing them bounds the walk's depth
                raise _Damage(f"{what} is an array of {'arrays' if sub == _ARRAY else f'unknown type {sub}'}")
        else:
            raise _Damage(f"{what} has an unknown value type {vtype}")

    def strings(self, n: int, what: str) -> None:
        """Skip `n` strings (u64 length + bytes): the vocabulary's ~50k tokens, so a tight loop."""
        unpack, buf, pos, end = struct.Struct(self.order + "Q").unpack_from, self.buf, self.pos, self.size
        for _ in range(n):
            if pos + 8 > end:
                raise _Damage(f"{what} runs past the end of the file")
            pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            raise _Damage(f"{what} runs past the end of the file")
        self.pos = pos

    def unique_name(self, kind: str, i: int, seen: set[str], entry: str | None = None) -> tuple[str, str]:
        """The i-th key or tensor name, and how messages call it; a name seen before is damage."""
        name = self.name(f"{entry or kind} #{i}")
        label = f"{kind} {printable_name(name, f'#{i}')}"
        if name in seen:
            raise _Damage(f"{label} appears twice")
        seen.add(name)
        return name, label

    def tensors(self, n: int, alignment: int) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        seen: set[str] = set()
        spans = []
        for i in range(n):
            name, label = self.unique_name("tensor", i, seen, "tensor info")
            n_dims = self.u32(label)
            if n_dims > _MAX_DIMS:
                raise _Damage(f"{label} has {n_dims} dimensions; GGUF tensors have at most {_MAX_DIMS}")
            dims = [self.u64(label) for _ in range(n_dims)]
            raw_type = self.u32(label)
            try:
                qtype = GGMLQuantizationType(raw_type)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise _Damage(f"{label} has an unknown tensor type {raw_type}") from None
            offset = self.u64(label)
            elements = 1
            for d in dims:  # Python ints: no product can wrap around
                elements *= d
            if dims and dims[0] % block:
                raise _Damage(f"{label}: rows of {dims[0]} values do not split into {qtype.name} blocks of {block}")
            spans.append((label, offset, elements // block * type_size, dims))
        data_start = -(-self.pos // alignment) * alignment
        for label, offset, nbytes, dims in spans:
            if data_start + offset + nbytes > self.size:
                raise _Damage(f"{label} (shape {dims}, {nbytes} bytes at data offset {offset}) runs past the end "
                              "of the file")
