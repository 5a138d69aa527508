"""One conversion: resolve the source → read its base rope → build the RopeSpec → write the exports.

Validation and publishing hook in after the writers (validators/, formats/hub.py); the CLI stays a thin shell over
`convert()`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.gguf_read import existing_scaling, hf_config_from_gguf, open_gguf
from ropeconvert.formats.hf_config import base_rope_from_config, rope_dict, rope_type
from ropeconvert.formats.output import check_output, output_group
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
            outtype: str | None = None, static: bool = False, base_model: str | None = None) -> ConvertResult:
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
    if to != "gguf":  # fail before any slow work; the writers check again (and the source's cached copy)
        check_output(out, force, directory=True, sources=(source.path,))
    result = ConvertResult(spec, source)
    from ropeconvert.formats.hub_base import license_of_source  # the card carries the base's licence (issue 5)

    provenance = {**source.provenance(), "source_license": license_of_source(source.kind, source.path)}
    if base_model is not None:
        provenance["base_model"] = base_model
    hf_provenance = {**provenance, "weights_origin": weights_note(source, "hf", outtype, link)} if to != "gguf" else {}
    gguf_provenance = {**provenance, "weights_origin": weights_note(source, "gguf", outtype, link)} if to != "hf" else {}
    if gguf_out is not None:
        from ropeconvert.formats.gguf import export_gguf

        path, notes = export_gguf(source, spec, gguf_out, outtype=outtype, static=static, force=force,
                                  progress=progress, check_only=to == "both",  # both: refuse before the HF write
                                  provenance=gguf_provenance)
        if to == "gguf":
            result.outputs["gguf"], result.notes = path, notes
            return result
    from ropeconvert.formats.hf import write_hf_export

    # --to both: the two halves are written to temporary paths and put in place together at the end of the group, or
    # neither is (a failing GGUF half leaves the previous outputs as they were)
    with output_group():
        path, notes = write_hf_export(hf_checkpoint(source, progress), spec, out, force=force, link=link,
                                      progress=progress, provenance=hf_provenance)
        result.outputs["hf"] = path
        result.notes += notes
        if gguf_out is not None:
            path, notes = export_gguf(source, spec, gguf_out, outtype=outtype, static=static, force=force,
                                      progress=progress, provenance=gguf_provenance)
            result.outputs["gguf"] = path
            result.notes += notes
    return result


def weights_note(source: Source, kind: str, outtype: str | None, link: bool) -> str:
    """Where the export's weights came from, in words, for the card (the truth: the embedded model's HF export holds
    float32 weights dequantized from a Q4_1 GGUF, not the original checkpoint)."""
    if source.kind == "gguf":
        from ropeconvert.formats.inspect import tensor_types

        types = tensor_types(open_gguf(source.path))
        if kind == "gguf":
            return f"tensor bytes copied unchanged from the source GGUF ({types}); only the rope metadata differs"
        return (f"float32, dequantized from the source GGUF ({types}): as precise as that quantized file, not the "
                f"original full-precision checkpoint; only the rope configuration differs")
    if kind == "gguf":
        return f"converted from the source's safetensors to {(outtype or 'f16').upper()} (norms F32)"
    return ("hard-linked" if link else "copied byte for byte") + \
        " from the source's safetensors; only the rope configuration differs"


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _short(rope: dict[str, Any]) -> str:
    keys = ("factor", "original_max_position_embeddings")
    parts = [f"{k}={rope[k]}" for k in keys if k in rope]
    return f"({', '.join(parts)})" if parts else ""
