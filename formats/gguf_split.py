"""Sharded GGUF input: the files llama.cpp's `llama-gguf-split` writes, read as one model.

The format (llama.cpp tools/gguf-split/gguf-split.cpp, gguf-py `Keys.Split`): shards are named
`PREFIX-%05d-of-%05d.gguf`, numbered from 1; the first carries every key/value of the model, and every shard carries
`split.no` (u16, from 0), `split.count` (u16) and `split.tensors.count` (i32, the total over all shards) with its own
tensors, whose offsets point into its own file. A file is a shard when it says so (`split.count` > 1), whatever its
name; its siblings are then found by name in its directory, as llama.cpp's loader finds them, and checked the way
that loader checks them (shard numbers, tensor total, no tensor twice).

`SplitReader` is what ropeconvert uses of a GGUFReader (`fields`, `tensors`, `endianess`) over every shard, so the
readers that walk `reader.tensors` (dequantization, re-extension, inspect) need not know. gguf's reader gives each
tensor `.data` as a view of its own file's memory map and `data_offset` into that file; `file_of` names that file
for whoever reads bytes by offset.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable

from gguf import Keys

from ropeconvert.errors import InputError
from ropeconvert.formats.safe_io import open_regular

NO, COUNT, TENSORS = Keys.Split.LLM_KV_SPLIT_NO, Keys.Split.LLM_KV_SPLIT_COUNT, Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")  # llama_split_path's "%s-%05d-of-%05d.gguf"
_REDOWNLOAD = "download the shards of one split again, all into one directory"


class SplitReader:
    """One model over the shards of a split: the first shard's key/values, every shard's tensors in shard order."""

    def __init__(self, paths: list[Path], readers: list[Any]):
        self.paths = paths
        self.identities = tuple(file_identity(p) for p in paths)  # what open_gguf's cache is keyed by, per shard
        # the split.* keys describe the files, not the model: copied into a merged re-extension they would send
        # llama.cpp looking for shards beside it (llama-gguf-split --merge zeroes split.count for the same reason)
        self.fields = type(readers[0].fields)((k, f) for k, f in readers[0].fields.items() if not k.startswith("split."))
        self.tensors = [t for r in readers for t in r.tensors]
        self.endianess = readers[0].endianess
        self._file = {t.name: p for p, r in zip(paths, readers) for t in r.tensors}


def file_identity(path: Path) -> tuple:
    """A file as the kernel knows it: any rewrite changes the size, inode or mtime."""
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def still_current(reader) -> bool:
    """Whether a cached reader still describes its files (a plain one is cached by its file's identity already)."""
    if not isinstance(reader, SplitReader):
        return True
    try:
        return reader.identities == tuple(file_identity(p) for p in reader.paths)
    except OSError:  # a shard gone since: read the set again, and say which one is missing
        return False


def shard_paths(reader, path: Path) -> list[Path]:
    """The files a reader reads: every shard in order for a split, else `path` alone."""
    return list(reader.paths) if isinstance(reader, SplitReader) else [Path(path)]


def files_of(path: Path, reader: Callable[[], Any]) -> list[Path]:
    """The files a GGUF path stands for: every shard in order when it is named like a shard, else itself. Only then is
    `reader()` called (one named otherwise is never read as a split: merge_split refuses it), so a plain file is not
    parsed just to ask."""
    return shard_paths(reader(), path) if SHARD_NAME.fullmatch(Path(path).name) else [Path(path)]


def file_of(reader, tensor, path: Path) -> Path:
    """The file holding `tensor`'s bytes at its `data_offset`: its own shard for a split, else `path`."""
    return reader._file[tensor.name] if isinstance(reader, SplitReader) else Path(path)


def sha256_files(paths: list[Path], chunk: int = 16 << 20) -> str:
    """sha256 of the files' bytes one after the other. For a split this is the digest of every shard in shard order,
    as `cat NAME-*-of-0000N.gguf | sha256sum` prints it; for one file, that file's own sha256."""
    h = hashlib.sha256()
    for path in paths:
        with open_regular(path) as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def merge_split(path: Path, reader, read_one: Callable[[Path], Any]):
    """`reader` itself when `path` is not a shard; else one SplitReader over every shard of its split (whichever shard
    `path` is), each opened with `read_one`. A split that does not add up is one InputError, before anything is read."""
    count = _split_int(reader, COUNT, path, 0, 0xFFFF)
    if count is None or count <= 1:  # none, or a merged file (split.count 0) or a one-file "split": a plain GGUF
        return reader
    no = _split_int(reader, NO, path, 0, count - 1)
    name = SHARD_NAME.fullmatch(path.name)
    if no is None or name is None or (int(name["no"]), int(name["count"])) != (no + 1, count):
        shown = f"shard {no + 1} of" if no is not None else "a shard of"
        raise InputError(f"{path.name} is {shown} a {count}-file split GGUF, but its name is not "
                         f"PREFIX-{(no or 0) + 1:05d}-of-{count:05d}.gguf, so its other shards cannot be found",
                         "give the shards back the names llama-gguf-split wrote (llama.cpp finds them the same way)")
    paths = [path.absolute().with_name(f"{name['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p.name} is missing: all {count} shards must be in the same directory",
                             f"put every shard of {name['prefix']} beside {path.name}")
    readers = [reader if i == no else read_one(p) for i, p in enumerate(paths)]
    for i, (p, r) in enumerate(zip(paths, readers)):
        theirs = _split_int(r, COUNT, p, 0, 0xFFFF)
        if theirs != count:
            raise InputError(f"{p.name} says split.count={theirs}, {path.name} says {count}: the shards are not "
                             "from one split", _REDOWNLOAD)
        if _split_int(r, NO, p, 0, 0xFFFF) != i:
            raise InputError(f"{p.name} carries split.no={_split_int(r, NO, p, 0, 0xFFFF)}, but its name makes it "
                             f"shard {i + 1} (split.no {i})", _REDOWNLOAD)
        if r.endianess != readers[0].endianess:
            raise InputError(f"{p.name} is of another byte order than {paths[0].name}", _REDOWNLOAD)
    seen: dict[str, Path] = {}
    for p, r in zip(paths, readers):
        for t in r.tensors:
            if t.name in seen:  # llama.cpp refuses it too ("tensor is duplicated"): which copy is the model's?
                from ropeconvert.formats.gguf_header import printable_name

                raise InputError(f"tensor {printable_name(t.name, '(unprintable name)')} is in both "
                                 f"{seen[t.name].name} and {p.name}", _REDOWNLOAD)
            seen[t.name] = p
    merged = SplitReader(paths, readers)
    expected = _split_int(readers[0], TENSORS, paths[0], 0, 1 << 31)
    if expected != len(merged.tensors):
        raise InputError(f"the {count} shards of {name['prefix']} hold {len(merged.tensors)} tensors, but "
                         f"{paths[0].name} says split.tensors.count={expected}: a shard is incomplete or from "
                         "another split", _REDOWNLOAD)
    return merged


def _split_int(reader, key: str, path: Path, least: int, most: int) -> int | None:
    """A split.* key as an int in [least, most], None when absent; anything else is damage, named."""
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        v = f.contents()
    except Exception:
        v = None
    if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= most:
        raise InputError(f"{path.name}: GGUF metadata {key} must be an integer from {least} to {most}",
                         "the file is damaged; re-download it")
    return v


def first_shard(path: Path, name: str, progress: bool, open_reader: Callable[[Path], Any]) -> tuple[Path, str]:
    """(the path a GGUF source reads, its name). A shard of a split GGUF stands for its split, read from its first
    shard as llama.cpp reads it: that shard's path with symlinks kept (the names find the siblings, and a Hub cache
    links each shard to a blob named by its hash), and the name typed with the first shard's file name. A plain GGUF
    is itself, resolved; only a file named like a shard is opened to ask (a renamed shard is refused when read).
    `open_reader`: gguf_read.open_gguf (passed in: gguf_read imports this module)."""
    if not SHARD_NAME.fullmatch(path.name):
        return path.resolve(), name
    shards = shard_paths(open_reader(path), path.absolute())
    if len(shards) == 1:
        return path.resolve(), name
    if shards[0].name == path.name:
        return shards[0], name
    first = shards[0]
    if progress:
        import sys

        print(f"note: {path.name} is a shard of a split GGUF: reading the split from its first shard {first.name}",
              file=sys.stderr)
    return first, str(Path(name).with_name(first.name))
