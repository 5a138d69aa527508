"""THE GGUF writer: one context manager owns an export's whole sequence, so no caller can put a step out of order.

    with GgufExport(out, arch, provenance, force=force, sources=(src,)) as gx:
        gx.keys.add_block_count(...)          # gguf's typed setters (the digest placeholder and provenance are in)
        gx.add_rope(rope, spec)               # rope keys + rope tensors (first in the data section)
        gx.add_tensor(name, shape, dtype, nbytes, raw_dtype, data=f)  # f(): the bytes, block by block
        gx.write(progress)                    # header, keys, tensor infos, data: gguf's own states and alignment
    # leaving the block: the sha256 is sealed into the file and the file is put in place (formats/output.py)

Digest placeholder → provenance → keys → rope → tensor infos → data → seal. Everything goes through GGUFWriter: its
WriterState refuses a call out of order, it lays out every tensor at its alignment (a custom `general.alignment` of
a re-extended source included) and checks each tensor's byte count against its info. Tensors reach it as lazy
objects whose `tofile` writes their blocks, so HF→GGUF (formats/gguf.py, converted block by block) and re-extension
(formats/gguf_reextend.py, copied from the source file) stream the same way and memory stays a few blocks. Every
byte written is hashed on the way, on a thread of its own, so the seal needs no second pass over the file.
"""
from __future__ import annotations

import hashlib
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFEndian, GGUFWriter
from tqdm import tqdm

from ropeconvert.formats.gguf_integrity import add_provenance, write_seal
from ropeconvert.formats.gguf_rope import GgufRope, add_rope
from ropeconvert.formats.output import atomic_output

HASH_QUEUE = 8  # written buffers waiting for the hashing thread
NATIVE = GGUFEndian.BIG if sys.byteorder == "big" else GGUFEndian.LITTLE
Chunks = Callable[[], Iterable[Any]]  # returns buffers (bytes, uint8 arrays …) holding the tensor's bytes in order


class GgufExport:
    """One GGUF file being written at `out` (atomically: a failure anywhere leaves the previous file as it was)."""

    def __init__(self, out: Path, arch: str, provenance: dict[str, Any] | None = None, *, force: bool = False,
                 sources: Sequence[Path] = (), endianess: GGUFEndian = GGUFEndian.LITTLE):
        self._out, self._arch, self._provenance = out, arch, provenance
        self._force, self._sources, self._endianess = force, tuple(sources), endianess
        self._tensors: list[_Lazy] = []
        self._file: _HashingFile | None = None
        self.path: Path | None = None  # the final path, once the block succeeded

    def __enter__(self) -> "GgufExport":
        self._stack = ExitStack()
        with ExitStack() as undo:
            undo.push(self._stack)
            self.tmp = self._stack.enter_context(atomic_output(self._out, force=self._force, directory=False,
                                                               sources=self._sources))
            self.keys = GGUFWriter(str(self.tmp), self._arch, endianess=self._endianess)
            add_provenance(self.keys, self._provenance)  # first: the sealed digest covers every key after it
            undo.pop_all()
        return self

    def add_rope(self, rope: GgufRope, spec=None) -> None:
        """The rope keys and tensors (the tensors before every weight, as llama.cpp's converter puts them)."""
        add_rope(self.keys, rope, spec)
        for name, arr in rope.tensors.items():
            data = np.ascontiguousarray(arr if self._endianess == NATIVE else arr.byteswap())
            self.add_tensor(name, arr.shape, arr.dtype, arr.nbytes, data=lambda d=data: (d.data,))

    def add_tensor(self, name: str, shape: Sequence[int], dtype: np.dtype, nbytes: int,
                   raw_dtype: GGMLQuantizationType | None = None, *, data: Chunks) -> None:
        """Register a tensor (its info goes in now, its bytes at write(), in registration order)."""
        self.keys.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype)
        self._tensors.append(_Lazy(name, nbytes, data))

    def write(self, progress: bool = True, desc: str = "write GGUF") -> None:
        """Header, key/values, tensor infos, then every tensor's data through GGUFWriter's own states."""
        w = self.keys
        w.open_output_file()
        assert w.fout is not None and len(w.fout) == 1  # one file: no split options are ever passed
        self._file = _HashingFile(w.fout[0])
        w.fout[0] = self._file  # type: ignore[assignment]  # every later write goes through the hasher
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total = sum(t.nbytes for t in self._tensors)
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress) as bar:
            for t in self._tensors:
                t.bar = bar
                w.write_tensor_data(t, tensor_endianess=self._endianess)  # type: ignore[arg-type]  # bytes as given

    def __exit__(self, kind, value, tb) -> bool:
        try:
            self.keys.close()  # drains the hashing thread
            if kind is None:
                if self._file is None:
                    raise RuntimeError("GgufExport left before write()")  # a bug in the caller, not bad input
                write_seal(self.tmp, self._file.hasher.hexdigest())
        except BaseException:
            if not self._stack.__exit__(*sys.exc_info()):
                raise
            return True
        suppressed = self._stack.__exit__(kind, value, tb)
        if kind is None:
            self.path = Path(self._out).expanduser().absolute()
        return bool(suppressed)


class _Lazy:
    """A tensor's bytes as GGUFWriter.write_tensor_data takes them: `nbytes`, and `tofile` writing them."""

    def __init__(self, name: str, nbytes: int, data: Chunks):
        self.name, self.nbytes, self._data, self.bar = name, nbytes, data, None

    def tofile(self, f) -> None:
        written = 0
        for buf in self._data():
            view = memoryview(buf).cast("B")
            f.write(view)
            written += view.nbytes
            if self.bar is not None:
                self.bar.update(view.nbytes)
        if written != self.nbytes:  # a bug here would shift every later tensor: never write such a file
            raise RuntimeError(f"{self.name}: wrote {written} bytes, the tensor info says {self.nbytes}")


class _HashingFile:
    """The output file, with every byte written also fed, in order, to a sha256 on a thread of its own (hashlib
    releases the GIL on large buffers, so hashing overlaps converting and writing)."""

    def __init__(self, f):
        self._f, self.hasher = f, hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-sha256")
        self._pending: deque = deque()

    def write(self, buf) -> int:
        n = self._f.write(buf)
        self._pending.append(self._pool.submit(self.hasher.update, buf))  # the future keeps buf alive
        while len(self._pending) > HASH_QUEUE:
            self._pending.popleft().result()
        return n

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._f.close()
