"""A finished export, read once: `Export.open(path)` is the one reader that publish, validate, inspect and verify share.

An HF export is a directory (config.json, weights, tokenizer, the manifest `ropeconvert.json`, and the validators'
report.json, report.md and PNG plots inside it). A GGUF export is one file that carries its manifest as metadata
(`ropeconvert.spec`, `ropeconvert.source*`, formats/gguf_keys.py); its report lives in `<name>.report/` beside it.
Each part (config, GGUF reader, manifest, spec, rope, report) is read the first time a consumer asks for it and kept,
so a publish that renders the card, checks the report and lists the files opens each file once — and validating an
export does not trip over an old report it never reads. This module also owns the names every consumer agrees on:
the manifest file, the report directory, the report schema ids, and what "the same rope" means.
"""
from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import show
from ropeconvert.formats.gguf_keys import PROVENANCE, Keys
from ropeconvert.formats.gguf_read import field, is_gguf, open_gguf
from ropeconvert.formats.safe_io import parse_json, read_json

MANIFEST_FILE = "ropeconvert.json"  # written by formats/hf.py
CARD = "README.md"
REPORT_SCHEMA = "ropeconvert.report/2"  # written by validate
REPORT_SCHEMAS = ("ropeconvert.report/1", REPORT_SCHEMA)  # read: /1 is /2 without registered tasks (RULER)
# config.json keys that say how positions are encoded: what an HF export's rope "as written" is
HF_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings",
                "original_max_position_embeddings", "partial_rotary_factor", "dpe")
RTOL = 1e-6  # "the same rope" ignores float noise: a validator may rebuild a spec from a config or float32 keys
MANIFEST_FIX = "re-export it, or restore the file"


class BadSpec(InputError):
    """The spec an export embeds is not a valid RopeSpec (verify reports it as a change instead of stopping)."""


def report_dir_for(export: Path) -> Path:
    """Where an export's report.json lives: inside an HF directory, in `<name>.report/` beside a GGUF."""
    export = Path(export)
    return export if export.is_dir() else export.with_name(export.stem + ".report")


def same_rope(a, b) -> bool:
    """Whether two ropes are the same: RopeSpec `a` against a RopeSpec, or against a BaseRope (plain RoPE read back
    from a config, e.g. static NTK). Same frequencies at each length either is defined for (original and target),
    same attention factor, same contexts and position map. Method names and knobs may differ: a config read back
    names no search, and a validator may rebuild the spec from the config."""
    import numpy as np

    def close(x, y) -> bool:
        return bool(np.allclose(x, y, rtol=RTOL, atol=0.0))

    if not hasattr(b, "target_context"):  # a BaseRope: one set of frequencies at every length
        return all(close(a.inv_freq(n), b.inv_freq()) for n in (a.original_context, a.target_context)) \
            and math.isclose(a.attention_factor, 1.0, rel_tol=RTOL)
    lengths = {a.original_context, a.target_context, b.original_context, b.target_context}
    maps = [None if s.position_map is None else s.position_map.to_dict() for s in (a, b)]
    return (a.original_context, a.target_context) == (b.original_context, b.target_context) and maps[0] == maps[1] \
        and all(close(a.inv_freq(n), b.inv_freq(n)) for n in sorted(lengths)) \
        and math.isclose(a.attention_factor, b.attention_factor, rel_tol=RTOL)


def spec_of(data: Any):
    """A RopeSpec from a manifest's or report's spec dict, or None when it is not a valid one."""
    from ropeconvert.convert.spec import RopeSpec
    from ropeconvert.errors import RopeConvertError

    try:
        return RopeSpec.from_dict(data) if isinstance(data, dict) else None
    except (RopeConvertError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def read_manifest(path: Path) -> dict[str, Any]:
    """ropeconvert.json parsed safely: an object whose `spec` (if any) is an object. verify checks its file list."""
    data = read_json(path, "manifest", MANIFEST_FIX)
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(data).__name__}", MANIFEST_FIX)
    if not isinstance(data.get("spec"), (dict, type(None))):
        raise InputError(f"{path}: spec must be an object, got {show(data['spec'])}", MANIFEST_FIX)
    return data


def read_report(report_dir: Path) -> dict[str, Any] | None:
    """report.json of an export (None when there is none), with the shape publishing and the card rely on checked."""
    path = Path(report_dir) / "report.json"
    if not path.is_file():
        return None
    fix = f"re-run `ropeconvert validate {report_dir}`"
    report = read_json(path, "report", fix)
    if not isinstance(report, dict):
        raise InputError(f"{path} must hold a JSON object", fix)
    if report.get("schema") not in REPORT_SCHEMAS or not isinstance(report.get("passed"), bool):
        raise InputError(f"{path} is not a ropeconvert validation report (schema {show(report.get('schema'))})", fix)
    for key, kind in (("plots", dict), ("checks", list), ("spec", dict)):
        if report.get(key) is not None and not isinstance(report[key], kind):
            raise InputError(f"{path}: {key} must be {'an object' if kind is dict else 'a list'}, got "
                             f"{show(report[key])}", fix)
    if not all(isinstance(c, dict) for c in report.get("checks") or []):
        raise InputError(f"{path}: every entry of checks must be an object", fix)
    for name in (report.get("plots") or {}).values():
        if not (Path(report_dir) / str(name)).is_file():
            raise InputError(f"{path} names plot {name!r}, which is missing", fix)
    return report


class Export:
    """An HF export directory or a GGUF export file. Build it with `Export.open`; every attribute is read on first
    use and kept (a failed read raises each time it is asked for, so verify can report it as a finding)."""

    def __init__(self, kind: Literal["hf", "gguf"], path: Path):
        self.kind, self.path = kind, Path(path)

    def __repr__(self) -> str:
        return f"Export({self.kind!r}, {str(self.path)!r})"

    @classmethod
    def open(cls, path: Path) -> "Export":
        """The export at `path`; a missing path or something that is not an export is one InputError."""
        path = Path(path).expanduser().absolute()
        if path.is_dir():
            if not (path / "config.json").is_file() and not os.path.lexists(path / MANIFEST_FILE):
                raise InputError(f"{path} has no config.json",
                                 "pass an export written by ropeconvert (an HF directory or a .gguf file)")
            return cls("hf", path)
        if path.is_file() and is_gguf(path):
            return cls("gguf", path)
        if not os.path.lexists(path):
            raise InputError(f"{path} not found (it does not exist)",
                             "check the path: pass the HF directory or .gguf file that ropeconvert wrote")
        raise InputError(f"{path} is neither an HF model directory nor a GGUF file",
                         "pass a directory with config.json or a .gguf file")

    # ---- what the files hold, read once ---------------------------------------------------------------------------
    @cached_property
    def config(self) -> dict[str, Any]:
        """config.json, checked field by field (formats/config_check.py), by formats.source.read_config."""
        from ropeconvert.formats.source import read_config

        if self.kind != "hf":
            raise InputError(f"{self.path} has no config.json", "pass an HF model directory (config.json + weights)")
        return read_config(self.path)

    @cached_property
    def reader(self):
        """The GGUFReader (one open for every consumer of this export)."""
        if self.kind != "gguf":
            raise InputError(f"{self.path} is not a GGUF file", "pass a .gguf file")
        return open_gguf(self.path)

    @cached_property
    def arch(self) -> str | None:
        return field(self.reader, "general.architecture") if self.kind == "gguf" else self.config.get("model_type")

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        """ropeconvert.json of an HF export (None when absent; GGUF exports carry theirs as metadata)."""
        path = self.path / MANIFEST_FILE
        return read_manifest(path) if self.kind == "hf" and os.path.lexists(path) else None

    @cached_property
    def spec_dict(self) -> dict[str, Any] | None:
        """The spec the export embeds, as written (the manifest's, or the GGUF's ropeconvert.spec); None if none."""
        if self.kind == "hf":
            return (self.manifest or {}).get("spec")
        raw = field(self.reader, Keys.SPEC)
        if raw is None:
            return None
        what = f"{self.path}: its {Keys.SPEC} metadata"
        fix = f"the file was damaged after export; `ropeconvert verify {self.path}` shows what changed"
        try:
            data = parse_json(raw, what, fix) if isinstance(raw, str) else None
        except InputError:
            raise BadSpec(f"{what} is not a valid spec", fix) from None
        if not isinstance(data, dict):
            raise BadSpec(f"{what} is not a valid spec", fix)
        return data

    @cached_property
    def spec(self):
        """The embedded spec as a RopeSpec (None if none). A spec that breaks RopeSpec's own rules raises its
        SpecError; one that is not a spec at all is BadSpec."""
        from ropeconvert.convert.spec import RopeSpec
        from ropeconvert.errors import RopeConvertError

        data = self.spec_dict
        if data is None:
            return None
        try:
            return RopeSpec.from_dict(data)
        except RopeConvertError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            if self.kind == "hf":
                raise BadSpec(f"{self.path / MANIFEST_FILE}: its spec is not a valid ropeconvert spec",
                              MANIFEST_FIX) from None
            raise BadSpec(f"{self.path}: its {Keys.SPEC} metadata is not a valid spec",
                          f"the file was damaged after export; `ropeconvert verify {self.path}` shows what "
                          "changed") from None

    @cached_property
    def provenance(self) -> dict[str, Any]:
        """Where the export came from, as recorded in it: the whole manifest (HF), or the ropeconvert.source* keys
        (GGUF; the licence is JSON there). Never a machine path."""
        if self.kind == "hf":
            return dict(self.manifest or {})
        out = {name: value for name, key in PROVENANCE.items() if (value := field(self.reader, key))}
        if isinstance(out.get("source_license"), str) and out["source_license"].startswith("{"):
            out["source_license"] = parse_json(out["source_license"], f"the {Keys.Source.LICENSE} metadata of "
                                               f"{self.path}", "re-export it with ropeconvert")
        return out

    @cached_property
    def rope(self):
        """The rope as written: config.json's rope keys (HF), or the GGUF's rope keys and tensors (a GgufRope)."""
        if self.kind == "hf":
            return {k: self.config[k] for k in HF_ROPE_KEYS if k in self.config}
        from ropeconvert.formats.gguf_rope import read_rope

        return read_rope(self.reader)

    @property
    def report_dir(self) -> Path:
        return report_dir_for(self.path)

    @cached_property
    def report(self) -> dict[str, Any] | None:
        return read_report(self.report_dir)

    @property
    def card_path(self) -> Path:
        """Where the rendered card is written locally (the export itself holds it, so local == Hub)."""
        if self.kind == "hf":
            return self.path / CARD
        return self.report_dir / CARD if self.report_dir.is_dir() else self.path.with_name(self.path.stem + ".README.md")
