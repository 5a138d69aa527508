"""The tensor-data section of a GGUF export: every tensor converted in row blocks on two threads, written in order,
and hashed on the way (the file's sealed sha256 then needs no second pass over the data).

A block is about BLOCK_BYTES of source rows, read straight from the safetensors file, so memory holds a few blocks
whatever the tensor or model size. Llama-arch Q/K rows are permuted per head, so their blocks hold whole heads.
The casts are numpy's and release the GIL, as do the file writes and hashlib on large buffers: with a window of
blocks in flight both cores convert while the writer thread (the caller) writes and hashes.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType, quants
from tqdm import tqdm

from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.tensors import DTYPES, TensorInfo

Q = GGMLQuantizationType
BLOCK_BYTES = 4 * 1024 * 1024  # source bytes per conversion job: a few MB stays in cache through the casts
IN_FLIGHT = 6  # jobs submitted ahead of the writer
ALIGNMENT = 32  # gguf's default general.alignment, which GGUFWriter uses for the tensor offsets


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    qtype: GGMLQuantizationType
    source: TensorInfo
    n_head: int | None = None  # set for llama-arch Q/K: rows are permuted for the interleaved rope

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return tuple(quants.quant_shape_to_byte_shape(self.shape, self.qtype))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.byte_shape))


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp's interleaved pairs, per head (the inverse of gguf_read.unpermute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def jobs(plan: TensorPlan) -> list[Callable[[], np.ndarray]]:
    """Callables that return the tensor's GGUF bytes block by block, in file order."""
    info = plan.source
    if info.dtype not in ("F32", "F16", "BF16"):
        raise UnsupportedError(f"tensor {info.name!r} has dtype {info.dtype}, which GGUF export does not convert",
                               "give a float checkpoint (F32, F16 or BF16)")
    rows, cols = (1, plan.shape[0]) if len(plan.shape) == 1 else (plan.shape[0], int(np.prod(plan.shape[1:])))
    row_bytes = cols * DTYPES[info.dtype][0]
    unit = rows // plan.n_head if plan.n_head else 1  # whole heads per block for the Q/K permutation
    step = max(unit, BLOCK_BYTES // row_bytes // unit * unit)
    return [lambda r=r: _convert(plan, r, min(step, rows - r), cols, row_bytes, unit) for r in range(0, rows, step)]


def _convert(plan: TensorPlan, row: int, n_rows: int, cols: int, row_bytes: int, unit: int) -> np.ndarray:
    info = plan.source
    dtype = np.uint16 if info.dtype == "BF16" else DTYPES[info.dtype][1]
    raw = np.fromfile(info.file, dtype=dtype, count=n_rows * cols, offset=info.begin + row * row_bytes)
    if raw.size != n_rows * cols:
        raise InputError(f"{info.file}: tensor {info.name!r} is cut short", "the file is truncated; re-download it")
    raw = raw.reshape(n_rows, cols)
    if plan.n_head:
        raw = permute_qk(raw, n_rows // unit)
    bf16 = info.dtype == "BF16"
    if bf16 and plan.qtype == Q.BF16:  # same dtype: the stored bits are the output (no float round trip)
        return np.ascontiguousarray(raw)
    if plan.qtype == Q.F16 and not bf16:
        return raw.astype(np.float16)
    f32 = np.left_shift(raw, 16, dtype=np.uint32).view(np.float32) if bf16 else raw.astype(np.float32, copy=False)
    if plan.qtype == Q.F32:
        return f32
    if plan.qtype == Q.F16:
        return f32.astype(np.float16)
    if plan.qtype == Q.Q8_0:
        return q8_0(f32)
    return quants.quantize(f32, plan.qtype)  # gguf's bit-exact BF16 rounding


def q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (f16 scale, 32 int8) bit for bit as gguf's `quants.Q8_0` (ggml-quants.c's reference) writes
    them, ~20% faster: the per-block max is a tree of pairwise maxima over column halves (numpy's reduce over
    32-wide rows was a third of the time), and the rounding (half away from zero, as roundf) is done in place."""
    blocks = x.reshape(-1, 32)
    a = np.abs(blocks)
    m = a
    while m.shape[1] > 1:
        half = m.shape[1] // 2
        m = np.maximum(m[:, :half], m[:, half:])
    d = m / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(1, d, out=inv, where=d != 0)
    v = np.multiply(blocks, inv, out=a)
    r = np.abs(v)
    whole = np.floor(r)
    r -= whole
    r *= 2
    np.floor(r, out=r)
    r += whole  # |v| rounded half away from zero
    np.copysign(r, v, out=r)
    out = np.empty((blocks.shape[0], 34), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = r.astype(np.int8).view(np.uint8)
    return out.reshape(*x.shape[:-1], x.shape[-1] // 32 * 34)


def write_tensor_data(f: IO[bytes], tensors: list[np.ndarray], plans: list[TensorPlan], hasher,
                      progress: bool) -> None:
    """Write the data section at `f` (positioned at the end of the tensor infos): alignment padding, then each
    tensor padded to ALIGNMENT, as GGUFWriter lays them out; every byte also goes to `hasher`."""
    def put(buf) -> None:
        f.write(buf)
        hasher.update(buf)

    put(bytes(-f.tell() % ALIGNMENT))
    for arr in tensors:  # the small rope tensors, already built
        put(np.ascontiguousarray(arr).data)
        put(bytes(-arr.nbytes % ALIGNMENT))
    bar = tqdm(total=sum(p.nbytes for p in plans), desc="write GGUF", unit="B", unit_scale=True, disable=not progress)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gguf-convert") as pool, bar:
        written = 0
        for plan, block in _in_order(pool, plans):
            if block is None:  # end of a tensor
                if written != plan.nbytes:  # a bug here would shift every later tensor: never write such a file
                    raise RuntimeError(f"{plan.gguf_name}: wrote {written} bytes, the tensor info says {plan.nbytes}")
                put(bytes(-plan.nbytes % ALIGNMENT))
                written = 0
                continue
            put(block.data)
            written += block.nbytes
            bar.update(block.nbytes)


def _in_order(pool: ThreadPoolExecutor, plans: list[TensorPlan]) -> Iterator[tuple[TensorPlan, np.ndarray | None]]:
    """Converted blocks in file order with up to IN_FLIGHT jobs running ahead; None marks the end of a tensor."""
    todo = ((plan, job) for plan in plans for job in [*jobs(plan), None])
    window: deque = deque()
    try:
        for plan, job in todo:
            window.append((plan, None if job is None else pool.submit(job)))
            while len(window) > IN_FLIGHT:
                plan_, fut = window.popleft()
                yield plan_, None if fut is None else _as_bytes(fut.result())
        while window:
            plan_, fut = window.popleft()
            yield plan_, None if fut is None else _as_bytes(fut.result())
    finally:
        for _, fut in window:
            if fut is not None:
                fut.cancel()


def _as_bytes(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block).reshape(-1).view(np.uint8)
