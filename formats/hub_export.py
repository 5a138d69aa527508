"""What a publish reads from an export: its files, its spec and provenance, and its validation report.

An HF export is a directory (config.json, weights, tokenizer, `ropeconvert.json`, and the validators' report.json,
report.md and PNG plots inside it). A GGUF export is one file; its report lives in `<name>.report/` beside it. The
report is judged here — passed, failed, missing or stale (made for another spec) — so that publishing can refuse an
export nobody has shown to work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ropeconvert.errors import InputError
from ropeconvert.formats.config_check import show
from ropeconvert.formats.gguf_read import ROPE_TENSORS, field as gguf_field, is_gguf, open_gguf
from ropeconvert.formats.hub_base import license_of_origin
from ropeconvert.formats.safe_io import parse_json, read_json

REPORT_SCHEMA = "ropeconvert.report/2"  # written by validate
REPORT_SCHEMAS = ("ropeconvert.report/1", REPORT_SCHEMA)  # read: /1 is /2 without registered tasks (RULER)
PROVENANCE_FILE = "ropeconvert.json"  # written by formats/hf.py
CARD = "README.md"
# config.json keys that say how positions are encoded: the card shows them verbatim
HF_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings",
                "original_max_position_embeddings", "partial_rotary_factor", "dpe")

Status = Literal["passed", "failed", "missing", "stale", "unextended"]


@dataclass
class Export:
    kind: Literal["hf", "gguf"]
    path: Path
    report_dir: Path  # where report.json lives (or would live)
    provenance: dict[str, Any]
    spec: dict[str, Any] | None  # RopeSpec.to_dict()
    rope_config: dict[str, Any]  # exactly what the export carries (config.json keys, or GGUF keys and tensors)
    report: dict[str, Any] | None
    status: Status
    status_detail: str
    files: dict[str, Path] = field(default_factory=dict)  # path in repo → local file (the card is added later)

    @property
    def card_path(self) -> Path:
        """Where the rendered card is written locally (the export itself holds it, so local == Hub)."""
        if self.kind == "hf":
            return self.path / CARD
        return self.report_dir / CARD if self.report_dir.is_dir() else self.path.with_name(self.path.stem + ".README.md")

    def report_files(self) -> set[str]:
        if not self.report:
            return set()
        names = {"report.json", str(self.report.get("markdown") or "report.md")}
        return names | {str(p) for p in (self.report.get("plots") or {}).values()}


def load_export(path: Path) -> Export:
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json", "pass an export written by ropeconvert (an HF directory or a .gguf file)")
        return _load_hf(path)
    if path.is_file() and is_gguf(path):
        return _load_gguf(path)
    if not path.exists():
        raise InputError(f"{path} does not exist", "pass the export written by `ropeconvert MODEL --method … --out PATH`")
    raise InputError(f"{path} is neither an HF export directory nor a GGUF file")


def _load_hf(path: Path) -> Export:
    config = _read_json(path / "config.json", "config")
    provenance = _read_json(path / PROVENANCE_FILE, "manifest") if (path / PROVENANCE_FILE).is_file() else {}
    rope = {k: config[k] for k in HF_ROPE_KEYS if k in config}
    report = _read_report(path)
    spec = provenance.get("spec") or (report or {}).get("spec")
    export = Export("hf", path, path, provenance, spec, rope, report, *_judge(report, provenance.get("spec")))
    skip = set() if export.status != "stale" else export.report_files()  # stale evidence is not published
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts) \
                and rel != CARD and rel not in skip:
            export.files[rel] = f
    return export


def _load_gguf(path: Path) -> Export:
    reader = open_gguf(path)
    arch = gguf_field(reader, "general.architecture")
    rope: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key == f"{arch}.context_length" or key.startswith(f"{arch}.rope.") or key.startswith("ropeconvert."):
            rope[key] = _plain(f.contents())
    embedded = rope.pop("ropeconvert.spec", None)  # the whole spec: the card's "what was done" shows it in words
    for t in reader.tensors:
        if t.name in ROPE_TENSORS:
            rope[f"tensor {t.name}"] = [float(v) for v in t.data.reshape(-1)]
    report_dir = path.with_name(path.stem + ".report")
    report = _read_report(report_dir)
    spec = (parse_json(embedded, f"the ropeconvert.spec metadata of {path}", "re-export it with ropeconvert")
            if isinstance(embedded, str) and embedded.startswith("{") else (report or {}).get("spec"))
    if spec is not None and not isinstance(spec, dict):
        raise InputError(f"the ropeconvert.spec metadata of {path} is not an object", "re-export it with ropeconvert")
    from ropeconvert.formats.gguf_integrity import PROVENANCE_KEYS

    provenance = {k: rope[f"ropeconvert.{k}"] for k in PROVENANCE_KEYS if f"ropeconvert.{k}" in rope}
    if isinstance(provenance.get("source_license"), str) and provenance["source_license"].startswith("{"):
        provenance["source_license"] = parse_json(provenance["source_license"],  # written as JSON by add_provenance
                                                  f"the ropeconvert.source_license metadata of {path}",
                                                  "re-export it with ropeconvert")
    sibling = path.with_suffix("") / PROVENANCE_FILE  # `--to both` wrote the HF export (with provenance) beside it
    if "source" not in provenance and sibling.is_file() and spec is not None:
        recorded = _read_json(sibling, "manifest")
        if same_rope(recorded.get("spec") or {}, spec):
            provenance.update({k: recorded[k] for k in ("source", "source_revision", "source_name", "source_license",
                                                        "base_model", "ropeconvert_version") if recorded.get(k) is not None})
    if "source" not in provenance and isinstance((report or {}).get("base"), (str, dict)):
        provenance["source"] = _origin_of(report["base"])
    # re-extended GGUFs keep the source's general.license; converted ones name their base only in the report
    provenance["source_license"] = (gguf_field(reader, "general.license") or provenance.get("source_license")
                                    or license_of_origin(provenance.get("source")))
    export = Export("gguf", path, report_dir, provenance, spec, rope, report,
                    *_judge(report, spec if isinstance(embedded, str) else None))
    export.files[path.name] = path
    if export.status != "stale" and report_dir.is_dir():
        for f in sorted(report_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name != CARD:
                export.files[f.name] = f
    return export


def _read_report(report_dir: Path) -> dict[str, Any] | None:
    path = report_dir / "report.json"
    if not path.is_file():
        return None
    report = _read_json(path, "report")
    if report.get("schema") not in REPORT_SCHEMAS or not isinstance(report.get("passed"), bool):
        raise InputError(f"{path} is not a ropeconvert validation report (schema {show(report.get('schema'))})",
                         f"re-run `ropeconvert validate {report_dir}`")
    for key, kind in (("plots", dict), ("checks", list), ("spec", dict)):
        if report.get(key) is not None and not isinstance(report[key], kind):
            raise InputError(f"{path}: {key} must be {'an object' if kind is dict else 'a list'}, got "
                             f"{show(report[key])}", f"re-run `ropeconvert validate {report_dir}`")
    if not all(isinstance(c, dict) for c in report.get("checks") or []):
        raise InputError(f"{path}: every entry of checks must be an object", f"re-run `ropeconvert validate {report_dir}`")
    for name in (report.get("plots") or {}).values():
        if not (report_dir / str(name)).is_file():
            raise InputError(f"{path} names plot {name!r}, which is missing", f"re-run `ropeconvert validate {report_dir}`")
    return report


def _judge(report: dict[str, Any] | None, export_spec: dict[str, Any] | None) -> tuple[Status, str]:
    """passed / failed / missing / stale, with the reason in words."""
    if report is None:
        return "missing", "no validation report (report.json) was found"
    # A report made for another rope (the export was rewritten after validation) proves nothing about this one.
    if export_spec is not None and report.get("spec") is not None and not same_rope(report["spec"], export_spec):
        return "stale", "report.json was made for a different rope spec than the export now carries"
    original = report.get("original_context")
    measured = [n for t in (report.get("tasks") or {}).values() if isinstance(t, dict) for n in t.get("lengths") or []
                if isinstance(n, int)]
    if isinstance(original, int) and measured and max(measured) <= original:  # older reports lack the check
        return "unextended", (f"not validated for the extension: no length past the original context {original} "
                              f"was measured")
    if report["passed"]:
        return "passed", "all validation checks passed"
    failed = [c.get("name", "?") for c in report.get("checks") or [] if not c.get("passed")]
    return "failed", "validation failed" + (f" ({', '.join(map(str, failed))})" if failed else "")


ROPE_FIELDS = ("method", "target_context", "rope_theta", "factors", "short_factors", "attention_factor", "dynamic_factor")


def same_rope(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same rope, field by field (params and float noise aside: a validator may rebuild the spec from config)."""
    def close(x: Any, y: Any) -> bool:
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            return math.isclose(x, y, rel_tol=1e-6)
        return x == y

    base_a, base_b = a.get("base") or {}, b.get("base") or {}
    return all(close(a.get(k), b.get(k)) for k in ROPE_FIELDS) and \
        close(base_a.get("original_context"), base_b.get("original_context"))


def _origin_of(base: str | dict[str, Any]) -> str | None:
    if isinstance(base, str):
        return base
    for key in ("origin", "source", "name", "path"):
        if isinstance(base.get(key), str):
            return base[key]
    return None


def _plain(value: Any) -> Any:
    """GGUF contents as JSON-able values (numpy scalars and arrays become floats/lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _read_json(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from the export; a manifest's or report's `spec` must be an object (same_rope reads it)."""
    data = read_json(path, what, "re-create it with ropeconvert")
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object", "re-create it with ropeconvert")
    if what != "config" and not isinstance(data.get("spec"), (dict, type(None))):
        raise InputError(f"{path}: spec must be an object, got {show(data['spec'])}", "re-create it with ropeconvert")
    return data
