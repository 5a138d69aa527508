"""Reading per-pair factor files (LongRoPE and searched factors). Text and JSON only: nothing is unpickled.

Accepted (reference/methods.md §2.4):
- one float per line (LongRoPE `result_final.csv`, `np.savetxt(..., delimiter='\\n')`) or one comma-separated row;
- a per-layer CSV (rows × d/2) whose rows are identical (LongRoPE research/released files) — differing rows are
  refused, because HF and GGUF carry one list for all layers;
- JSON: a list, or an object with `long_factor`/`short_factor` (also `long`/`short`, `factors`);
- a Phi-3 style config.json (`rope_scaling.long_factor/short_factor`, `original_max_position_embeddings`,
  `max_position_embeddings`), which also gives the original and target lengths.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ropeconvert.errors import InputError

MAX_FACTOR_FILE_BYTES = 16 * 1024 * 1024  # a factor file is a few KB; refuse to slurp something huge by mistake


@dataclass(frozen=True)
class FactorSet:
    long: tuple[float, ...]
    short: tuple[float, ...] | None = None
    original_context: int | None = None
    target_context: int | None = None


def load_factor_file(path: str | Path) -> FactorSet:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"factor file {str(p)!r} not found", "pass an existing CSV or JSON file to --factors")
    if p.stat().st_size > MAX_FACTOR_FILE_BYTES:
        raise InputError(f"factor file {str(p)!r} is {p.stat().st_size} bytes, too large for a factor list")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"factor file {str(p)!r} is not UTF-8 text", "give a CSV or JSON factor file") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return _from_json(p, text)
    return FactorSet(long=_from_csv(p, text))


def _from_csv(p: Path, text: str) -> tuple[float, ...]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append([float(x) for x in line.replace(";", ",").split(",") if x.strip()])
        except ValueError:
            raise InputError(f"{p}: line {n} is not a list of numbers: {line[:60]!r}") from None
    if not rows:
        raise InputError(f"factor file {str(p)!r} holds no numbers")
    if all(len(r) == 1 for r in rows):  # one float per line
        return tuple(r[0] for r in rows)
    if len(rows) == 1:
        return tuple(rows[0])
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise InputError(f"{p}: rows have different lengths {sorted(widths)}", "give one factor list, one per line")
    first = rows[0]
    for i, row in enumerate(rows[1:], 1):
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(first, row)):
            raise InputError(
                f"{p}: per-layer factors differ (row {i} ≠ row 0); HF and GGUF exports carry one list for all layers",
                "give a file with one factor list (or identical rows)",
            )
    return tuple(first)


def _from_json(p: Path, text: str) -> FactorSet:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, list):
        return FactorSet(long=_numbers(p, "list", data))
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a JSON list or object of factors")
    rope = data.get("rope_scaling") or data.get("rope_parameters")
    if isinstance(rope, dict) and "long_factor" in rope:  # a Phi-3 style config.json
        orig = data.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        target = data.get("max_position_embeddings")
        return FactorSet(
            long=_numbers(p, "long_factor", rope["long_factor"]),
            short=_numbers(p, "short_factor", rope["short_factor"]) if rope.get("short_factor") else None,
            original_context=int(orig) if orig else None,
            target_context=int(target) if target and orig and target > orig else None,
        )
    for long_key, short_key in (("long_factor", "short_factor"), ("long", "short"), ("factors", "short_factors")):
        if long_key in data:
            short = data.get(short_key)
            return FactorSet(
                long=_numbers(p, long_key, data[long_key]),
                short=_numbers(p, short_key, short) if short is not None else None,
                original_context=_opt_int(data.get("original_context")),
                target_context=_opt_int(data.get("target_context")),
            )
    raise InputError(f"{p}: no factor list found", "use a JSON list or an object with 'long_factor' (and 'short_factor')")


def _numbers(p: Path, key: str, values) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise InputError(f"{p}: {key} must be a non-empty list of numbers")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{p}: {key}[{i}] = {v!r} is not a number")
        out.append(float(v))
    return tuple(out)


def _opt_int(v) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
