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

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import MAX_CONTEXT, check_config, positive_int, show
from ropeconvert.formats.safe_io import parse_json, read_bytes

MAX_FACTOR_FILE_BYTES = 16 * 1024 * 1024  # a factor file is a few KB; refuse to slurp something huge by mistake
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class FactorSet:
    long: tuple[float, ...]
    short: tuple[float, ...] | None = None
    original_context: int | None = None
    target_context: int | None = None


def load_factor_file(path: str | Path) -> FactorSet:
    p = Path(path)
    raw = read_bytes(p, "factor file", MAX_FACTOR_FILE_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"factor file {p} is not UTF-8 text", "give a CSV or JSON factor file") from None
    if text.lstrip().startswith(("[", "{")):
        return _from_json(p, text)
    return FactorSet(long=_from_csv(p, text))


def parse_number(token: str) -> float | None:
    """A factor as written in a file: a plain decimal number (`nan`/`inf` pass here so the spec can name the bad
    entry), else None. Python's float() would also take `1_0` (= 10.0), which no factor file means."""
    token = token.strip()
    if _DECIMAL.fullmatch(token) or token.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(token)
    return None


def _from_csv(p: Path, text: str) -> tuple[float, ...]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        items = [x for x in line.replace(";", ",").split(",") if x.strip()]
        row = [parse_number(x) for x in items]
        if None in row:  # never quote the line: the file may not be a factor file at all
            raise InputError(f"factor file {p}: line {n} is not a list of numbers (item {row.index(None) + 1} of "
                             f"{len(row)} is not a plain decimal number)", "give one number per line, or one CSV row")
        rows.append(row)
    if not rows:
        raise InputError(f"factor file {p} holds no numbers", "give one number per line, or one CSV row")
    if all(len(r) == 1 for r in rows):  # one float per line
        return _positive(p, "factors", [r[0] for r in rows])
    if len(rows) == 1:
        return _positive(p, "factors", rows[0])
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise InputError(f"factor file {p}: rows have different lengths {sorted(widths)}", "give one factor list, one per line")
    first = _positive(p, "factors", rows[0])
    for i, row in enumerate(rows[1:], 1):
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(first, row)):
            raise InputError(
                f"factor file {p}: per-layer factors differ (row {i} ≠ row 0); HF and GGUF exports carry one list for all layers",
                "give a file with one factor list (or identical rows)",
            )
    return first


def _from_json(p: Path, text: str) -> FactorSet:
    data = parse_json(text, f"factor file {p}", "give a JSON list or an object with 'long_factor'")
    if isinstance(data, list):
        return FactorSet(long=_numbers(p, "list", data))
    if not isinstance(data, dict):
        raise InputError(f"factor file {p}: expected a JSON list or object of factors",
                         "give a JSON list or an object with 'long_factor'")
    rope = data.get("rope_scaling") or data.get("rope_parameters")
    if isinstance(rope, dict) and "long_factor" in rope:  # a Phi-3 style config.json: the config checks apply
        check_config(data, f"factor file {p}")
        orig = rope.get("original_max_position_embeddings") or data.get("original_max_position_embeddings")
        target = data.get("max_position_embeddings")
        return FactorSet(
            long=_numbers(p, "long_factor", rope["long_factor"]),
            short=_numbers(p, "short_factor", rope["short_factor"]) if rope.get("short_factor") else None,
            original_context=orig,
            target_context=target if target and orig and target > orig else None,
        )
    for long_key, short_key in (("long_factor", "short_factor"), ("long", "short"), ("factors", "short_factors")):
        if long_key in data:
            short = data.get(short_key)
            return FactorSet(
                long=_numbers(p, long_key, data[long_key]),
                short=_numbers(p, short_key, short) if short is not None else None,
                original_context=_opt_context(p, data, "original_context"),
                target_context=_opt_context(p, data, "target_context"),
            )
    raise InputError(f"factor file {p}: no factor list found",
                     "use a JSON list or an object with 'long_factor' (and 'short_factor')")


def _numbers(p: Path, key: str, values) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise InputError(f"factor file {p}: {key} must be a non-empty list of numbers, got {show(values)}",
                         "write the factors as a JSON list of numbers")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"factor file {p}: {key}[{i}] = {show(v)} is not a number", "write factors as JSON numbers")
        out.append(float(v))
    return _positive(p, "factors" if key == "list" else key, out)


def _positive(p: Path, key: str, values: list[float]) -> tuple[float, ...]:
    """Every factor a finite number > 0 (1e400 parses as inf, NaN as nan: refused here, naming the entry)."""
    for i, v in enumerate(values):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"factor file {p}: {key}[{i}] = {v!r}: every factor must be a finite number > 0",
                             "fix that entry (θ_i is divided by it)")
    return tuple(values)


def _opt_context(p: Path, data: dict, key: str) -> int | None:
    value = data.get(key)
    return None if value is None else positive_int(f"factor file {p}", key, value, MAX_CONTEXT,
                                                   f"write {key} as a whole number of tokens, or leave it out")
