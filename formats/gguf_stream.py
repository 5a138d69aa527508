"""The tensor data of an HF → GGUF export: every tensor converted in row blocks on two threads, handed in file order
to the GGUF writer (formats/gguf_writer.py, which lays it out, hashes and seals it); and THE Q/K permute rule, both ways.

A block is about BLOCK_BYTES of source rows, read straight from the safetensors file, so memory holds a few blocks
whatever the tensor or model size. Llama-arch Q/K rows are permuted per head, so their blocks hold whole heads.
The casts are numpy's and release the GIL, as do the file writes and hashlib on large buffers: with a window of
blocks in flight both cores convert while the writer writes and hashes what was written.
"""
from __future__ import annotations

import errno
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType, quants

from ropeconvert.errors import InputError, UnsupportedError
from ropeconvert.formats.tensors import DTYPES, TensorInfo

Q = GGMLQuantizationType
BLOCK_BYTES = 4 * 1024 * 1024  # source bytes per conversion job: a few MB stays in cache through the casts
IN_FLIGHT_BYTES = 128 << 20  # output converted ahead of the writer: it fills while the tokenizer loads
JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))  # adding 0.5 itself would round 0.49999997 up


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    qtype: GGMLQuantizationType
    source: TensorInfo
    n_head: int | None = None  # set for llama-arch Q/K: rows are permuted for the interleaved rope
    shift: float = 0.0  # added to every value (Gemma's RMSNorm weights: GGUF keeps 1 + w); F32 tensors only

    def __post_init__(self) -> None:
        """Refuse a shape the conversion cannot stream, before any output exists: products in Python ints (a
        `[2^62+16, 4]` shape would wrap numpy's int64 and ask for ~1.7e13 row blocks), checked against the bytes the
        source really holds; zero-size tensors; Q/K rows that do not split into whole heads of even size."""
        info, shape = self.source, self.shape
        where = f"{info.file}: tensor {info.name!r}"
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
            raise InputError(f"{where} has shape {list(shape)}; a GGUF export needs every dimension ≥ 1",
                             "the checkpoint is damaged; re-download or re-save it")
        itemsize = DTYPES.get(info.dtype, (None,))[0]
        if itemsize is not None and math.prod(shape) * itemsize != info.nbytes:
            raise InputError(f"{where} holds {info.nbytes} bytes but {info.dtype}{list(shape)} needs "
                             f"{math.prod(shape) * itemsize}", "the checkpoint is damaged; re-download it")
        if self.shift and self.qtype != Q.F32:
            raise ValueError(f"{info.name}: a shifted tensor is written as F32")  # a bug in the plan, not input
        if self.n_head is not None and shape[0] % (2 * self.n_head):
            raise InputError(f"{where} has {shape[0]} rows, which do not split into {self.n_head} heads of an even "
                             "size", "num_attention_heads / num_key_value_heads in config.json do not match the weights")

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in quants.quant_shape_to_byte_shape(self.shape, self.qtype))

    @property
    def nbytes(self) -> int:
        return math.prod(self.byte_shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp's interleaved pairs, per head, along the output dimension (archs whose
    `ARCHS[arch].permute_qk` is set: llama.cpp runs their rope on adjacent pairs, HF on the two halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of permute_qk (interleaved pairs → rotate-half), for GGUF → HF."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def jobs(plan: TensorPlan) -> list[tuple[Callable[[], np.ndarray], int]]:
    """(callable, output bytes) pairs whose callables return the tensor's GGUF bytes block by block, in file
    order."""
    info = plan.source
    if info.dtype not in ("F32", "F16", "BF16", "F64"):
        raise UnsupportedError(f"tensor {info.name!r} has dtype {info.dtype}, which GGUF export does not convert",
                               "give a float checkpoint (F32, F16 or BF16)")
    rows, cols = (1, plan.shape[0]) if len(plan.shape) == 1 else (plan.shape[0], math.prod(plan.shape[1:]))
    row_bytes = cols * DTYPES[info.dtype][0]
    unit = rows // plan.n_head if plan.n_head else 1  # whole heads per block for the Q/K permutation
    step = max(unit, BLOCK_BYTES // row_bytes // unit * unit)
    return [(lambda r=r: _convert(plan, r, min(step, rows - r), cols, row_bytes, unit),
             plan.nbytes // rows * min(step, rows - r)) for r in range(0, rows, step)]


def _convert(plan: TensorPlan, row: int, n_rows: int, cols: int, row_bytes: int, unit: int) -> np.ndarray:
    info = plan.source
    dtype = np.uint16 if info.dtype == "BF16" else DTYPES[info.dtype][1]
    try:
        raw = np.fromfile(info.file, dtype=dtype, count=n_rows * cols, offset=info.begin + row * row_bytes)
    except OSError as e:  # inside the output's block, where an OSError would read as a write failure
        raise InputError(f"cannot read {info.file} ({os.strerror(e.errno or errno.EIO)})",
                         "check the disk or the file") from None
    if raw.size != n_rows * cols:
        raise InputError(f"{info.file}: tensor {info.name!r} is cut short", "the file is truncated; re-download it")
    raw = raw.reshape(n_rows, cols)
    if plan.n_head:
        raw = permute_qk(raw, n_rows // unit)
    bf16 = info.dtype == "BF16"
    if bf16 and plan.qtype == Q.BF16:  # same dtype: the stored bits are the output (no float round trip)
        return np.ascontiguousarray(raw)
    if plan.qtype == Q.F16:
        return bf16_to_f16(raw) if bf16 else raw.astype(np.float16)
    if bf16 and plan.qtype == Q.Q8_0:
        return q8_0_bf16(raw)
    f32 = np.left_shift(raw, 16, dtype=np.uint32).view(np.float32) if bf16 else raw.astype(np.float32, copy=False)
    if plan.qtype == Q.F32:
        return f32 + np.float32(plan.shift) if plan.shift else f32
    if plan.qtype == Q.Q8_0:
        return q8_0(f32)
    return quants.quantize(f32, plan.qtype)  # gguf's bit-exact BF16 rounding


def bf16_to_f16(b: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) → float16, bit for bit what numpy's float32 → float16 cast gives, ~3.5× faster here
    (that cast has no SIMD path on this CPU and was most of an f16 export's CPU time). Inside float16's normal
    range the conversion is exact, so it is integer work: rebias the exponent (127 → 15) and widen the mantissa
    (7 → 10 bits). The rest (zero, float16 subnormals, overflow, inf/NaN: ~0.2% of typical weights) takes the
    float cast."""
    exp_mant = np.bitwise_and(b, 0x7FFF)
    out = np.subtract(exp_mant, np.uint16(112 << 7))  # exponent 113..142 ↔ float16 exponent 1..30
    np.left_shift(out, 3, out=out)
    out |= b & np.uint16(0x8000)
    exp_mant -= np.uint16(113 << 7)
    odd = np.flatnonzero(exp_mant > np.uint16(((143 - 113) << 7) - 1))  # outside float16's normal range
    if odd.size:
        with np.errstate(over="ignore"):  # overflow to ±inf is the right answer
            f32 = np.left_shift(b.reshape(-1)[odd], 16, dtype=np.uint32).view(np.float32)
            out.reshape(-1)[odd] = f32.astype(np.float16).view(np.uint16)
    return out.view(np.float16)


def q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (f16 scale, 32 int8) of float32 `x`, bit for bit as gguf's `quants.Q8_0` (ggml-quants.c's
    reference) writes them, in about half its time: the per-block max is a tree of pairwise maxima over column
    halves (numpy's reduce over 32-wide rows was a third of the time), and roundf (half away from zero) is
    v + copysign(0.5⁻, v) truncated by the int8 cast, which equals gguf's floor-based rounding for every float32
    in (-128, 128) (checked exhaustively when this was written; the test checks the hard cases)."""
    blocks = x.reshape(-1, 32)
    a = np.abs(blocks)
    return _q8_0_pack(blocks, _block_max(a), scratch=a).reshape(*x.shape[:-1], x.shape[-1] // 32 * 34)


def q8_0_bf16(bits: np.ndarray) -> np.ndarray:
    """`q8_0` of bfloat16 bits (uint16), the same bytes as widening first, ~12% faster: for non-NaN bfloat16 the
    order of |x| is the order of its low 15 bits, so the block maxima are taken on half the bytes."""
    blocks = bits.reshape(-1, 32)
    top = np.left_shift(_block_max(np.bitwise_and(blocks, np.uint16(0x7FFF))), 16, dtype=np.uint32)
    v = np.left_shift(blocks, 16, dtype=np.uint32).view(np.float32)
    return _q8_0_pack(v, top.view(np.float32), scratch=v).reshape(*bits.shape[:-1], bits.shape[-1] // 32 * 34)


def _block_max(a: np.ndarray) -> np.ndarray:
    while a.shape[1] > 1:
        half = a.shape[1] // 2
        a = np.maximum(a[:, :half], a[:, half:])
    return a


def _q8_0_pack(blocks: np.ndarray, max_abs: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    d = max_abs / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(1, d, out=inv, where=d != 0)
    v = np.multiply(blocks, inv, out=scratch)  # |v| <= 127
    r = np.copysign(JUST_BELOW_HALF, v)
    r += v
    out = np.empty((blocks.shape[0], 34), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = r.astype(np.int8).view(np.uint8)  # the cast truncates toward zero
    return out


class TensorStream:
    """The GGUF bytes of `plans`, block by block in file order. Conversion starts when the stream is made, so while
    the exporter waits for the tokenizer keys (which the header needs first) both cores already fill the window of
    IN_FLIGHT_BYTES of output (more blocks when the output is smaller, as for Q8_0); bad dtypes are refused here,
    before anything is written."""

    def __init__(self, plans: list[TensorPlan]):
        self.plans = plans
        self._todo = iter([(plan, job) for plan in plans for job in [*jobs(plan), (None, 0)]])  # None: tensor end
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gguf-convert")
        self._window: deque = deque()
        self._ahead = 0  # output bytes in the window
        self._fill()

    def _fill(self) -> None:
        while (not self._window or self._ahead < IN_FLIGHT_BYTES) and (item := next(self._todo, None)) is not None:
            plan, (job, size) = item
            self._window.append((plan, None if job is None else self._pool.submit(job), size))
            self._ahead += size

    def blocks(self) -> Iterator[tuple[TensorPlan, np.ndarray | None]]:
        while self._window:
            plan, fut, size = self._window.popleft()
            self._ahead -= size
            self._fill()
            yield plan, None if fut is None else np.ascontiguousarray(fut.result()).reshape(-1).view(np.uint8)

    def tensors(self) -> list[Callable[[], Iterator[np.ndarray]]]:
        """One callable per plan, in order, each yielding that tensor's blocks: the writer calls them in the order
        the tensors were registered, which is the stream's order."""
        blocks = self.blocks()

        def one(plan: TensorPlan) -> Iterator[np.ndarray]:
            for owner, block in blocks:
                if owner is not plan:  # the writer asked for tensors out of order: a bug, never a shifted file
                    raise RuntimeError(f"{plan.gguf_name}: the stream is at {owner.gguf_name}")
                if block is None:
                    return
                yield block

        return [lambda p=p: one(p) for p in self.plans]

    def __enter__(self) -> "TensorStream":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
