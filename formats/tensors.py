"""Safetensors checkpoints, read safely and lazily: headers parsed and checked by hand, one tensor at a time.

Nothing here unpickles. A checkpoint is a directory with `model.safetensors` or `model.safetensors.index.json` plus
the shards it names. Every header is validated before any byte is trusted (length, JSON, dtype, shapes and offsets
in exact integers inside the file, no overlaps, string metadata), only regular files are opened, and shard names from
an index must be plain file names inside the directory. `require_safetensors` is the one check run before any
library (transformers' from_pretrained) loads a checkpoint, so `.bin`/`.pt` pickles never reach torch.load.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import show
from ropeconvert.formats.safe_io import open_regular, parse_json, read_json

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
MAX_RANK = 8  # model weights have at most 4 dimensions
INT64_MAX = 2**63 - 1  # safetensors (and numpy) hold dimensions in 64-bit integers
# the JSON files from_pretrained parses besides config.json (read by formats/source.read_config)
LOADER_JSON = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "added_tokens.json")

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
    """The safetensors files of a checkpoint directory, in order, and its index file if sharded. Only names are
    decided here; read_header then opens each one as a regular file (a FIFO or a directory is refused there)."""
    index = hf_dir / INDEX_NAME
    if os.path.lexists(index):
        return _shards(hf_dir, index), index
    single = hf_dir / SINGLE_NAME
    if os.path.lexists(single):
        return (single,), None
    others = sorted(p.name for p in hf_dir.glob("*.safetensors"))
    if len(others) == 1:
        return (hf_dir / others[0],), None
    if len(others) > 1:
        raise InputError(f"{hf_dir} has {len(others)} safetensors files ({', '.join(others[:3])}) but no {INDEX_NAME}",
                         "add the index that names the shards, or keep one weights file")
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            f"{hf_dir} only has pickle weights ({', '.join(pickles[:3])}); ropeconvert never unpickles weights",
            "convert them to safetensors first (e.g. transformers `save_pretrained(..., safe_serialization=True)`)",
        )
    raise InputError(f"no safetensors weights in {hf_dir}", f"expected {SINGLE_NAME} or {INDEX_NAME} with its shards")


def _shards(hf_dir: Path, index: Path) -> tuple[Path, ...]:
    data = read_json(index, "safetensors index", "re-download the checkpoint's index file")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index}: not a valid safetensors index (needs a non-empty 'weight_map' object)",
                         "re-download the checkpoint's index file")
    shards = []
    for name in sorted({n for n in weight_map.values() if isinstance(n, str)}):
        if Path(name).name != name or name in ("", ".", "..") or "\0" in name:
            raise InputError(f"{index}: shard name {show(name)} is not a plain file name",
                             "refusing to read outside the model directory")
        if len(os.fsencode(name)) > 255:  # the kernel would answer ENAMETOOLONG
            raise InputError(f"{index}: shard name {show(name)} is {len(os.fsencode(name))} bytes, longer than a "
                             "file name can be", "fix the shard names in the index")
        if not name.endswith(".safetensors"):  # e.g. pytorch_model-00001-of-00002.bin: a pickle, never read
            raise InputError(f"{index}: shard {show(name)} is not a .safetensors file; ropeconvert never unpickles weights",
                             "convert the checkpoint to safetensors first (transformers `save_pretrained(..., "
                             "safe_serialization=True)`)")
        path = hf_dir / name
        if not os.path.lexists(path):
            raise InputError(f"shard {show(name)} named in {INDEX_NAME} is missing from {hf_dir}",
                             "download the complete checkpoint")
        shards.append(path)
    odd = next((n for n in weight_map.values() if not isinstance(n, str)), None)
    if odd is not None or not shards:
        raise InputError(f"{index}: weight_map value {show(odd)} is not a shard file name",
                         "re-download the checkpoint's index file")
    return tuple(shards)


def require_safetensors(model: str | Path) -> WeightIndex | None:
    """The check before any library loads a checkpoint (transformers' from_pretrained would torch.load a
    `pytorch_model.bin`, i.e. unpickle it): a local model directory must hold valid safetensors weights, and the
    small JSON files the loader parses must parse (a 200,000-deep tokenizer_config.json would overflow its parser).
    Anything else (an alias, a Hub id, a GGUF file) passes: Hub downloads never fetch pickles and GGUF sources are
    dequantized into safetensors, so those are checked when that directory exists."""
    hf_dir = Path(model).expanduser()
    if not hf_dir.is_dir():
        return None
    weights = index_weights(hf_dir)
    for name in LOADER_JSON:
        if os.path.lexists(hf_dir / name):
            read_json(hf_dir / name, name.removesuffix(".json").replace("_", " "))
    return weights


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse and validate one safetensors header; returns (header, offset of the data section). Every number is a
    Python int, so no shape or offset can wrap around before it is compared with the bytes the file really has."""
    with open_regular(path, "safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: truncated safetensors file ({size} bytes)", "re-download the file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise InputError(f"{path}: header length {n} runs past the end of the file ({size} bytes)",
                             "the file is truncated or not safetensors; re-download it")
        raw = f.read(n)
    header = parse_json(raw, f"the safetensors header of {path}", "the file is corrupt; re-download it")
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object", "the file is corrupt; re-download it")
    data_start, data_len = 8 + n, size - 8 - n
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            _check_metadata(path, meta)
            continue
        begin, end = _check_entry(path, name, meta, data_len)
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"{path}: tensors {show(n0)} and {show(n1)} overlap in the file", "the file is corrupt; re-download it")
    return header, data_start


def _check_entry(path: Path, name: str, meta: Any, data_len: int) -> tuple[int, int]:
    """One tensor's entry: a known dtype, a shape of positive int64 dims whose byte size (computed exactly, in
    Python ints) equals its data range, and that range inside the data section."""
    corrupt = "the file is corrupt; re-download it"
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= meta.keys():
        raise InputError(f"{path}: tensor {show(name)} has a malformed header entry (needs dtype, shape, data_offsets)", corrupt)
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InputError(f"{path}: tensor {show(name)} has unknown dtype {show(dtype)}",
                         f"safetensors dtypes are {', '.join(DTYPES)}; {corrupt}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or \
            not all(type(d) is int and 0 <= d <= INT64_MAX for d in shape):  # type(): a bool is no dimension
        raise InputError(f"{path}: tensor {show(name)} has an invalid shape {show(shape)} "
                         f"(up to {MAX_RANK} non-negative int64 dimensions)", corrupt)
    if 0 in shape:
        raise InputError(f"{path}: tensor {show(name)} has a zero-size shape {shape}; a model weight cannot be empty", corrupt)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise InputError(f"{path}: tensor {show(name)} has malformed data_offsets {show(offsets)} (needs [begin, end])", corrupt)
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise InputError(f"{path}: tensor {show(name)} data offsets [{begin}, {end}] lie outside the file "
                         f"({data_len} data bytes)", "the file is truncated or corrupt; re-download it")
    need = math.prod(shape) * DTYPES[dtype][0]
    if end - begin != need:
        raise InputError(f"{path}: tensor {show(name)} holds {end - begin} bytes but {dtype}{shape} needs "
                         f"{need if need < 10**30 else show(need)}", corrupt)
    return begin, end


def _check_metadata(path: Path, meta: Any) -> None:
    """`__metadata__` is a string → string map in the format (safetensors itself refuses anything else)."""
    if not isinstance(meta, dict):
        raise InputError(f"{path}: safetensors __metadata__ must be an object of strings, got {show(meta)}",
                         "the file is corrupt; re-save it with safetensors")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise InputError(f"{path}: safetensors __metadata__[{show(key)}] must be a string, got {show(value)}",
                             "the file is corrupt; re-save it with safetensors")


def index_weights(hf_dir: Path) -> WeightIndex:
    files, index = weight_files(hf_dir)
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        header, start = read_header(path)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if name in tensors:
                raise InputError(f"tensor {show(name)} appears in both {tensors[name].file.name} and {path.name}",
                                 "the checkpoint is inconsistent; re-download it")
            b, e = meta["data_offsets"]
            tensors[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), path, start + b, start + e)
    return WeightIndex(files, tensors, index)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a numpy array (BF16 widened to float32, which numpy lacks). Reads only its own bytes."""
    with open_regular(info.file, "safetensors file") as f:
        f.seek(info.begin)
        raw = f.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise InputError(f"{info.file}: tensor {show(info.name)} is cut short", "the file is truncated; re-download it")
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
