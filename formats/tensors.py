"""Safetensors checkpoints, read safely and lazily: headers parsed and checked by hand, one tensor at a time.

Nothing here unpickles. A checkpoint is a directory with `model.safetensors` or `model.safetensors.index.json` plus
the shards it names. Every header is validated before any byte is trusted (length, JSON, dtype, offsets inside the
file, no overlaps), and shard names from an index must be plain file names inside the directory.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ropeconvert.errors import InputError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit

# safetensors dtype → (bytes per element, numpy dtype or None when numpy has none)
DTYPES: dict[str, tuple[int, Any]] = {
    "F64": (8, np.float64), "F32": (4, np.float32), "F16": (2, np.float16), "BF16": (2, None),
    "I64": (8, np.int64), "I32": (4, np.int32), "I16": (2, np.int16), "I8": (1, np.int8), "U8": (1, np.uint8),
    "BOOL": (1, np.bool_), "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute byte offsets in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class WeightIndex:
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    index_file: Path | None  # model.safetensors.index.json when sharded

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def weight_files(hf_dir: Path) -> tuple[tuple[Path, ...], Path | None]:
    """The safetensors files of a checkpoint directory, in order, and its index file if sharded."""
    index = hf_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise InputError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from None
        shards = []
        for name in shard_names:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise InputError(f"{index}: shard name {name!r} is not a plain file name", "refusing to read outside the model directory")
            path = hf_dir / name
            if not path.is_file():
                raise InputError(f"shard {name!r} named in {INDEX_NAME} is missing from {hf_dir}", "download the complete checkpoint")
            shards.append(path)
        return tuple(shards), index
    single = hf_dir / SINGLE_NAME
    if single.is_file():
        return (single,), None
    others = sorted(p.name for p in hf_dir.glob("*.safetensors"))
    if len(others) == 1:
        return (hf_dir / others[0],), None
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            f"{hf_dir} only has pickle weights ({', '.join(pickles[:3])}); ropeconvert never unpickles weights",
            "convert them to safetensors first (e.g. transformers `save_pretrained(..., safe_serialization=True)`)",
        )
    raise InputError(f"no safetensors weights in {hf_dir}", f"expected {SINGLE_NAME} or {INDEX_NAME} with its shards")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse and validate one safetensors header; returns (header, offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: truncated safetensors file ({size} bytes)", "re-download the file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise InputError(f"{path}: header length {n} runs past the end of the file ({size} bytes)", "the file is truncated or not safetensors; re-download it")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path}: safetensors header is not valid JSON", "the file is corrupt; re-download it") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], meta["shape"], meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise InputError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InputError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise InputError(f"{path}: tensor {name!r} data offsets [{begin}, {end}] lie outside the file", "the file is truncated or corrupt; re-download it")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][0]:
            raise InputError(f"{path}: tensor {name!r} holds {end - begin} bytes but {dtype}{shape} needs {int(np.prod(shape)) * DTYPES[dtype][0]}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"{path}: tensors {n0!r} and {n1!r} overlap in the file", "the file is corrupt; re-download it")
    return header, data_start


def index_weights(hf_dir: Path) -> WeightIndex:
    files, index = weight_files(hf_dir)
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        header, start = read_header(path)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if name in tensors:
                raise InputError(f"tensor {name!r} appears in both {tensors[name].file.name} and {path.name}")
            b, e = meta["data_offsets"]
            tensors[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), path, start + b, start + e)
    return WeightIndex(files, tensors, index)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a numpy array (BF16 widened to float32, which numpy lacks). Reads only its own bytes."""
    with open(info.file, "rb") as f:
        f.seek(info.begin)
        raw = f.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise InputError(f"{info.file}: tensor {info.name!r} is cut short", "the file is truncated; re-download it")
    if info.dtype == "BF16":
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    np_dtype = DTYPES[info.dtype][1]
    if np_dtype is None:
        raise InputError(f"tensor {info.name!r} has dtype {info.dtype}, which cannot be converted here")
    return np.frombuffer(raw, dtype=np_dtype).reshape(info.shape)


def lazy_tensors(index: WeightIndex) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """(name, loader) pairs grouped by file, so conversion touches one shard at a time."""
    for path in index.files:
        for info in sorted((t for t in index.tensors.values() if t.file == path), key=lambda t: t.begin):
            yield info.name, (lambda info=info: read_tensor(info))
