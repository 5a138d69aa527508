"""One conversion: resolve the source → read its base rope → build the RopeSpec → write the exports.

Validation and publishing hook in after the writers (validators/, formats/hub.py); the CLI stays a thin shell over
`convert()`.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.gguf_read import existing_scaling, hf_config_from_gguf, open_gguf
from ropeconvert.formats.hf_config import base_rope_from_config, rope_dict, rope_type
from ropeconvert.formats.output import check_output
from ropeconvert.formats.source import Source, hf_checkpoint, resolve

TARGETS = ("hf", "gguf", "both")


@dataclass
class ConvertResult:
    spec: RopeSpec
    source: Source
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source.origin, "spec": self.spec.to_dict(),
                "outputs": {k: str(v) for k, v in self.outputs.items()}, "notes": self.notes}


def base_rope(source: Source, original_context: int | None = None, replace_scaling: bool = False) -> BaseRope:
    """The source's trained rope; refuses a source that already carries scaling unless told to replace it."""
    if source.kind == "hf":
        config = source.config()
        existing = None if rope_type(config) == "default" else f"{rope_type(config)} rope scaling {_short(rope_dict(config))}"
    else:
        reader = open_gguf(source.path)
        config = hf_config_from_gguf(reader)
        existing = existing_scaling(reader)
    base = base_rope_from_config(config, original_context)
    if existing and not replace_scaling:
        raise UnsupportedError(
            f"{source.name} already carries {existing}",
            f"pass --replace-scaling to replace it (the new method starts from θ={base.rope_theta:g} and the original "
            f"context {base.original_context}), or start from the base model",
        )
    return base


def default_out(source: Source, spec: RopeSpec, to: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.name.rstrip("/")).name).strip("-.") or "model"
    stem = re.sub(r"\.gguf$", "", stem)
    name = f"{stem}-{spec.method}-{_k(spec.target_context)}"
    return Path(name + ".gguf" if to == "gguf" else name)


def convert(model: str, method: str, *, to: str = "hf", out: Path | None = None, knobs: dict[str, Any] | None = None,
            original_context: int | None = None, force: bool = False, link: bool = False,
            replace_scaling: bool = False, revision: str | None = None, progress: bool = True,
            outtype: str | None = None, static: bool = False) -> ConvertResult:
    if to not in TARGETS:
        raise UnsupportedError(f"unknown export target {to!r}", f"choose one of: {', '.join(TARGETS)}")
    source = resolve(model, revision=revision, progress=progress)
    base = base_rope(source, original_context, replace_scaling)
    knobs = dict(knobs or {})
    if method == "dpe" and knobs.get("topk") is not None and knobs.get("dpe_map") is None:
        from ropeconvert.convert.search.dpe_select import selection_for  # DPE's top-k pairs, measured on the model

        knobs["selected"] = selection_for(source, base, knobs, progress)
    spec = build_spec(method, base, **knobs)
    out = Path(out) if out is not None else default_out(source, spec, to)
    gguf_out = None if to == "hf" else (out if to == "gguf" else Path(str(out) + ".gguf"))
    if to != "gguf":
        check_output(out, force)  # fail before any slow work
    result = ConvertResult(spec, source)
    from ropeconvert.formats.hub_base import license_of_source  # the card carries the base's licence (issue 5)

    provenance = {"source": source.origin, "source_revision": source.revision, "source_name": source.name,
                  "source_license": license_of_source(source.kind, source.path)}
    if gguf_out is not None:
        from ropeconvert.formats.gguf import export_gguf

        path, notes = export_gguf(source, spec, gguf_out, outtype=outtype, static=static, force=force,
                                  progress=progress, check_only=to == "both",  # both: refuse before the HF write
                                  provenance=provenance)
        if to == "gguf":
            result.outputs["gguf"], result.notes = path, notes
            return result
    from ropeconvert.formats.hf import write_hf_export

    path, notes = write_hf_export(hf_checkpoint(source, progress), spec, out, force=force, link=link,
                                  progress=progress, provenance=provenance)
    result.outputs["hf"] = path
    result.notes += notes
    if gguf_out is not None:  # --to both: the GGUF beside the HF directory; a failure takes the HF export back out
        try:
            from ropeconvert.formats.gguf import export_gguf

            path, notes = export_gguf(source, spec, gguf_out, outtype=outtype, static=static, force=force,
                                      progress=progress, provenance=provenance)
        except BaseException:
            shutil.rmtree(result.outputs.pop("hf"), ignore_errors=True)
            raise
        result.outputs["gguf"] = path
        result.notes += notes
    return result


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _short(rope: dict[str, Any]) -> str:
    keys = ("factor", "original_max_position_embeddings")
    parts = [f"{k}={rope[k]}" for k in keys if k in rope]
    return f"({', '.join(parts)})" if parts else ""
