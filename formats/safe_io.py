"""Reading user files without trusting them: only regular files are opened (a FIFO or a device would block or
stream forever), and JSON of any nesting depth or size becomes one InputError instead of a RecursionError or a
traceback. Every reader of user JSON (safetensors headers, indexes, configs, tokenizer configs, manifests, factor
files, search checkpoints, reports) goes through `read_json` / `parse_json`; errors never quote the file's text.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from ropeconvert.errors import InputError

MAX_JSON_BYTES = 1 << 30  # a config or index is kilobytes; a factor file or report megabytes at most
_NOT_A_DIR = "give the file itself there, not a directory of that name"
MAX_DEPTH = 64  # real configs, indexes, manifests and reports are under 10 levels; deeper values would overflow
#                 the recursive code that handles them later (copy.deepcopy, json.dumps with indent)


def open_regular(path: Path, what: str = "file") -> BinaryIO:
    """`open(path, "rb")` that refuses anything but a regular file before it can block: O_NONBLOCK makes opening a
    FIFO return at once, fstat then says what it is."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found", "check the path") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file", _NOT_A_DIR) from None
    except PermissionError:
        raise InputError(f"cannot read {what} {path} (permission denied)", "fix its permissions or pass another file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{what} {path} is a symlink loop", "point it at a real file") from None
        raise InputError(f"cannot read {what} {path} ({os.strerror(e.errno or errno.EIO)})", "check the path") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{what} {path} is a directory, not a file", _NOT_A_DIR)
        if not stat.S_ISREG(mode):
            raise InputError(f"{what} {path} is not a regular file (a FIFO, socket or device)",
                             "give a regular file there: FIFOs, sockets and devices are never read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, what: str = "file", limit: int | None = None) -> bytes:
    """The whole file (a regular file only); `limit` refuses a file larger than that many bytes."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise InputError(f"{what} {path} is {size} bytes, more than the {limit} a {what} can be",
                             "pass the right file")
        try:
            return f.read()
        except OSError as e:
            raise InputError(f"cannot read {what} {path} ({os.strerror(e.errno or errno.EIO)})", "check the disk or the file") from None


def parse_json(raw: bytes | str, what: str, fix: str = "fix or re-create the file") -> Any:
    """JSON text → value; invalid UTF-8, invalid JSON and nesting deeper than MAX_DEPTH are one InputError each.
    `what` is the whole subject of the message ("the safetensors header of /x/model.safetensors")."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text", fix) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", fix) from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply to parse (far deeper than any real one)", fix) from None
    except ValueError as e:  # an integer literal with more digits than Python's int conversion allows
        if "integer string conversion" in str(e):
            raise InputError(f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits "
                             "(no real value has that many)", fix) from None
        raise InputError(f"{what} holds a value JSON cannot represent here ({str(e).split(':')[0]})", fix) from None
    check_depth(value, what, fix)
    return value


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, walked without recursion; stops counting once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_depth(value: Any, what: str, fix: str = "fix or re-create the file", limit: int = MAX_DEPTH) -> None:
    if depth_of(value, limit) > limit:
        raise InputError(f"{what} is nested more than {limit} levels deep (no real one is)", fix)


def read_json(path: Path, what: str = "file", fix: str = "fix or re-create the file",
              limit: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file that a user (or anyone) may have handed us. `what` names it in messages:
    read_json(p, "config") → "config /x/config.json is not valid JSON (…)"."""
    return parse_json(read_bytes(path, what, limit), f"{what} {path}", fix)


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:  # an unreadable source is a read error (InputError), never "cannot write"
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
