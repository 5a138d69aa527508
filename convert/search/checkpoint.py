"""The search checkpoint: one JSON file (never pickle), written atomically after every evaluation.

{"format": "ropeconvert-search-checkpoint", "version": 1, "settings": {...},
 "phases": {"long": {"references": {name: record}, "state": <evolution state>}, "short": {...}}}

The evolution state (convert/search/evolution.py) holds the population, the numpy RNG's state and every evaluation,
so a resumed search is the uninterrupted one. A resume must use the settings the checkpoint was made with: anything
else would silently give a different search, so a difference is refused with the names and both values.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ropeconvert.errors import InputError, OutputError
from ropeconvert.formats.safe_io import check_depth, parse_json, read_bytes

FORMAT, VERSION = "ropeconvert-search-checkpoint", 1
NAME = "checkpoint.json"
MAX_BYTES = 256 * 1024 * 1024  # thousands of evaluations are a few MB; refuse to parse something absurd


def write_json(path: Path, data) -> None:
    """Write to a temporary file beside `path`, then rename: a crash leaves the old file or the new, never half.
    A full disk or an unwritable --out is one OutputError; the previous file (the last checkpoint) is kept."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            kept = " (the last complete checkpoint is kept)" if (path.parent / NAME).exists() else ""
            raise OutputError(f"ran out of space writing {path}",
                              f"free some space, then continue with --resume{kept}") from None
        raise OutputError(f"cannot write {path} ({e.strerror or type(e).__name__})",
                          "make --out writable, or choose another --out") from None


def new(settings: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "settings": settings, "phases": {}}


def load(path: Path, settings: dict) -> dict:
    """Read and check a checkpoint; refuse a corrupt one or one made with other settings (one-line errors)."""
    fix = f"delete {path} (or pass --force) to start the search over"
    if not os.path.lexists(path):
        raise InputError(f"no search checkpoint at {path}", "run without --resume to start a search there")
    raw = read_bytes(path, "search checkpoint", MAX_BYTES)  # a regular file only, of a sane size
    what = f"search checkpoint {path}"
    try:
        data = parse_json(raw, what, fix)  # any depth or size of JSON is one InputError
        check_depth(data, what, fix)
    except InputError as e:
        raise InputError(f"{what} is corrupt ({e.problem.removeprefix(what).strip().removeprefix('is ')})", fix) from None
    problem = _problem(data)
    if problem:
        raise InputError(f"search checkpoint {path} is corrupt ({problem})", fix)
    if data["version"] != VERSION:
        raise InputError(f"search checkpoint {path} has version {data['version']}, this ropeconvert reads {VERSION}", fix)
    differ = [k for k in sorted(set(settings) | set(data["settings"])) if data["settings"].get(k) != settings.get(k)]
    if differ:
        shown = "; ".join(f"{k}: checkpoint {data['settings'].get(k)!r}, now {settings.get(k)!r}" for k in differ[:4])
        raise InputError(f"the checkpoint in {path.parent} was made with other settings ({shown})",
                         "resume with the same options, or pass --force to start over")
    return data


def _problem(data) -> str | None:
    """What is wrong with a parsed checkpoint, or None. Checks every field the search reads."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "not a ropeconvert search checkpoint"
    if not isinstance(data.get("version"), int) or not isinstance(data.get("settings"), dict):
        return "missing version or settings"
    phases = data.get("phases")
    if not isinstance(phases, dict) or not set(phases) <= {"long", "short"}:
        return "bad phases"
    for name, phase in phases.items():
        if not isinstance(phase, dict) or not isinstance(phase.get("references"), dict):
            return f"phase {name}: bad references"
        for ref, rec in phase["references"].items():
            if not isinstance(rec, dict) or not _fitness_ok(rec.get("fitness")):
                return f"phase {name}: reference {ref} has no fitness"
        problem = _state_problem(phase.get("state"))
        if problem:
            return f"phase {name}: {problem}"
    return None


def _state_problem(st) -> str | None:
    if not isinstance(st, dict):
        return "no state"
    ints = ("generation", "n_seen", "stale")
    if any(not _int(st.get(k)) or st[k] < 0 for k in ints) or not isinstance(st.get("done"), bool):
        return "bad counters"
    if not isinstance(st.get("evaluations"), list) or st["n_seen"] > len(st["evaluations"]):
        return "bad evaluation list"
    for i, rec in enumerate(st["evaluations"]):
        if (not isinstance(rec, dict) or not _genes(rec.get("genes")) or not _fitness_ok(rec.get("fitness"))
                or not isinstance(rec.get("factors"), list)):
            return f"evaluation {i} is malformed"
    if not isinstance(st.get("population"), list) or not all(_genes(g) for g in st["population"]):
        return "bad population"
    if not isinstance(st.get("best_history"), list) or not all(_fitness_ok(v) for v in st["best_history"]):
        return "bad best_history"
    try:
        np.random.default_rng().bit_generator.state = st.get("rng")
    except (TypeError, ValueError, KeyError):
        return "bad RNG state"
    return None


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _genes(v) -> bool:
    return isinstance(v, list) and bool(v) and all(_int(g) for g in v)


def _fitness_ok(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
