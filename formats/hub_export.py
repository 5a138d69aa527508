"""What a publish makes of an export (read through formats/export.py): the files to upload, the rope to show
verbatim, where it came from, and its validation report judged — passed, failed, missing, stale (made for another
spec) or unextended — so that publishing can refuse an export nobody has shown to work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ropeconvert.formats.export import (CARD, MANIFEST_FILE, Export, read_manifest, same_rope,
                                        spec_of)
from ropeconvert.formats.gguf_keys import PREFIX, Keys, RopeTensors
from ropeconvert.formats.gguf_read import field as gguf_field
from ropeconvert.formats.hub_base import license_of_origin

Status = Literal["passed", "failed", "missing", "stale", "unextended"]
# identity fields a `--to both` HF manifest lends the GGUF beside it
LENT = ("source", "source_revision", "source_name", "source_license", "base_model", "ropeconvert_version")


@dataclass
class Publication:
    """An export as the card and the upload see it."""

    export: Export
    provenance: dict[str, Any]  # the export's own, completed for a GGUF (the HF export beside it, the report's base)
    spec: dict[str, Any] | None  # RopeSpec.to_dict(): the export's, else the report's
    rope_config: dict[str, Any]  # exactly what the export carries (config.json keys, or GGUF keys and tensors)
    status: Status
    status_detail: str
    files: dict[str, Path] = field(default_factory=dict)  # path in repo → local file (the card is added later)

    kind = property(lambda self: self.export.kind)
    path = property(lambda self: self.export.path)
    report = property(lambda self: self.export.report)
    report_dir = property(lambda self: self.export.report_dir)
    card_path = property(lambda self: self.export.card_path)

    def report_files(self) -> set[str]:
        if not self.report:
            return set()
        names = {"report.json", str(self.report.get("markdown") or "report.md")}
        return names | {str(p) for p in (self.report.get("plots") or {}).values()}


def load_export(path: Path | Export) -> Publication:
    """The publication of the export at `path` (or of an Export already open)."""
    export = path if isinstance(path, Export) else Export.open(path)
    report = export.report
    status = judge(report, export.spec if export.spec_dict is not None else None)
    if export.kind == "hf":
        pub = Publication(export, export.provenance, export.spec_dict or (report or {}).get("spec"), export.rope,
                          *status)
        skip = set() if pub.status != "stale" else pub.report_files()  # stale evidence is not published
        for f in sorted(export.path.rglob("*")):
            rel = f.relative_to(export.path).as_posix()
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(export.path).parts) \
                    and rel != CARD and rel not in skip:
                pub.files[rel] = f
        return pub
    spec = export.spec_dict or (report or {}).get("spec")
    pub = Publication(export, _gguf_provenance(export, spec), spec, _gguf_rope_config(export), *status)
    pub.files[export.path.name] = export.path
    if pub.status != "stale" and export.report_dir.is_dir():
        for f in sorted(export.report_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name != CARD:
                pub.files[f.name] = f
    return pub


def judge(report: dict[str, Any] | None, export_spec) -> tuple[Status, str]:
    """passed / failed / missing / stale / unextended, with the reason in words."""
    if report is None:
        return "missing", "no validation report (report.json) was found"
    # A report made for another rope (the export was rewritten after validation) proves nothing about this one.
    if export_spec is not None and report.get("spec") is not None:
        made_for = spec_of(report["spec"])
        if made_for is None or not same_rope(made_for, export_spec):
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


def _gguf_rope_config(export: Export) -> dict[str, Any]:
    """Every context, rope and ropeconvert key of the GGUF, and its rope tensors, verbatim (the card shows them);
    the embedded spec is left out (the card's "what was done" shows it in words)."""
    reader, arch = export.reader, export.arch
    rope: dict[str, Any] = {}
    for key in reader.fields:
        if key == f"{arch}.context_length" or key.startswith(f"{arch}.rope.") or key.startswith(PREFIX):
            rope[key] = _plain(gguf_field(reader, key))
    rope.pop(Keys.SPEC, None)
    for t in reader.tensors:
        if t.name in RopeTensors.ALL:
            rope[f"tensor {t.name}"] = [float(v) for v in t.data.reshape(-1)]
    return rope


def _gguf_provenance(export: Export, spec: dict[str, Any] | None) -> dict[str, Any]:
    """A GGUF records its source only when it was re-extended from another GGUF; otherwise the HF export written
    beside it (`--to both`) or the report's base name it, and the licence is looked up from there."""
    provenance = dict(export.provenance)
    sibling = export.path.with_suffix("") / MANIFEST_FILE
    if "source" not in provenance and sibling.is_file() and spec is not None:
        recorded = read_manifest(sibling)
        theirs, ours = spec_of(recorded.get("spec")), spec_of(spec)
        if theirs is not None and ours is not None and same_rope(theirs, ours):
            provenance.update({k: recorded[k] for k in LENT if recorded.get(k) is not None})
    report = export.report or {}
    if "source" not in provenance and isinstance(report.get("base"), (str, dict)):
        provenance["source"] = _origin_of(report["base"])
    # re-extended GGUFs keep the source's general.license; converted ones name their base only in the report
    provenance["source_license"] = (gguf_field(export.reader, "general.license") or provenance.get("source_license")
                                    or license_of_origin(provenance.get("source")))
    return provenance


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
