"""One `ropeconvert MODEL --method M …` run: convert → validate (if asked) → publish (if asked).

Convert: resolve the source once (formats/source.py: a Source reads its GGUF, config and base rope once) → build the
RopeSpec → check every export before the slow work → write. The CLI builds a ConvertOptions (convert/options.py),
calls `convert(opts)` and only prints the result (`lines()`, or `to_dict()` for --json).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.spec import RopeSpec
from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.output import check_output, output_group
from ropeconvert.formats.source import Source, hf_checkpoint, resolve

TARGETS = ("hf", "gguf", "both")


@dataclass
class ConvertResult:
    spec: RopeSpec
    source: Source
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # the validation table lines (--validate, --push)
    published: list[Any] = field(default_factory=list)  # formats.hub.PublishResult per output (--push)

    def to_dict(self) -> dict[str, Any]:
        extra = {"published": [r.to_dict() for r in self.published]} if self.published else {}
        return {"source": self.source.origin, "spec": self.spec.to_dict(),
                "outputs": {k: str(v) for k, v in self.outputs.items()}, "notes": self.notes, **extra}

    def lines(self) -> list[str]:
        """What the CLI prints: the rope, notes (llama.cpp running an approximation is a warning), the outputs,
        then validation and publishing."""
        s = self.spec
        out = [f"{s.method}: {s.original_context} → {s.target_context} tokens (s = {s.scale:g}), "
               f"rope_theta {s.rope_theta:g}, attention factor {s.attention_factor:.6g}"]
        if s.position_map is not None:
            pm = s.position_map
            chosen = "all pairs" if pm.selected is None else f"top {int(pm.selected[0, 0].sum())} of {pm.n_pairs} pairs"
            out.append(f"position map: window {pm.window}, pair groups {list(pm.boundaries)}, scales "
                       f"{[float(f'{g:g}') for g in pm.scales]}, {chosen} per (layer, head); runs in transformers "
                       "with `import ropeconvert` (attn_implementation ropeconvert_dpe)")
        out += [f"{'warning' if n.startswith(('APPROXIMATION', 'RUNTIME')) else 'note'}: {n}" for n in self.notes]
        out += [f"wrote {kind.upper()} export: {path}" for kind, path in self.outputs.items()]
        return out + self.validation + [line for r in self.published for line in r.lines()]


def convert(o: ConvertOptions, *, log: Callable[[str], None] | None = None,
            say: Callable[[str], None] | None = None) -> ConvertResult:
    """Convert, then validate (opts.validate or opts.push), then publish (opts.push) if validation passed; `log`
    receives publishing's progress notes, `say` each result line as soon as its stage is done (so a refused publish
    still shows the validation that refused it)."""
    if o.to not in TARGETS:
        raise UnsupportedError(f"unknown export target {o.to!r}", f"choose one of: {', '.join(TARGETS)}")
    if o.push is not None:  # refuse a bad repo id or a missing token before the slow part
        from ropeconvert.formats.hub import preflight

        preflight(o.push)
    if o.base_model is not None:
        from ropeconvert.formats.hub import check_repo_id

        check_repo_id(o.base_model)
    say = say or (lambda line: None)
    result = export(o)
    for line in result.lines():
        say(line)
    if o.validate or o.push is not None:  # --push implies --validate: only validated exports are published
        from ropeconvert.validators.command import validate_outputs

        result.validation = validate_outputs(result.outputs, o.model, not o.progress)
        for line in result.validation:
            say(line)
    if o.push is not None:  # publish refuses an export whose validation failed: the card shows the evidence
        from ropeconvert.formats.hub import publish

        for kind, path in result.outputs.items():
            repo = o.push + "-GGUF" if kind == "gguf" and len(result.outputs) > 1 else o.push
            result.published.append(publish(path, repo, private=o.private, progress=o.progress, log=log,
                                            base_model=o.base_model))
            for line in result.published[-1].lines():
                say(line)
    return result


def export(o: ConvertOptions) -> ConvertResult:
    """The conversion itself: every export is checked (GGUF: rope, shapes, output path) before any is written."""
    source = resolve(o.model, revision=o.revision, progress=o.progress)
    base = source.base_rope(o.original_context, o.replace_scaling)
    knobs = dict(o.knobs or {})
    if o.method == "dpe" and knobs.get("topk") is not None and knobs.get("dpe_map") is None:
        from ropeconvert.convert.search.dpe_select import selection_for  # DPE's top-k pairs, measured on the model

        knobs["selected"] = selection_for(source, base, knobs, o.progress)
    catalog_note = None
    if o.method == "longrope" and knobs.get("factors") is None:  # published factors for this very model, if any
        from ropeconvert.convert.catalog import from_catalog

        found = from_catalog(source.config(), knobs, o.original_context)
        if found is not None:
            entry, knobs = found
            base = source.base_rope(entry.original_context, o.replace_scaling)
            catalog_note = (f"factors from the catalog: {entry.name}, from {entry.source}"
                            + (f" ({entry.note})" if entry.note else ""))
    spec = build_spec(o.method, base, **knobs)
    out = Path(o.out) if o.out is not None else default_out(source, spec, o.to)
    gguf_out = None if o.to == "hf" else (out if o.to == "gguf" else Path(str(out) + ".gguf"))
    if o.to != "gguf":  # fail before any slow work; the writers check again (and the source's cached copy)
        check_output(out, o.force, directory=True, sources=(source.path,))
    job = None
    if gguf_out is not None:  # `--to both`: refused before the HF half is written; the rope is computed here once
        from ropeconvert.formats.gguf import check_gguf, export_gguf

        job = check_gguf(source, spec, gguf_out, outtype=o.outtype, static=o.static, force=o.force)
    result = ConvertResult(spec, source, notes=[catalog_note] if catalog_note else [])
    from ropeconvert.formats.hub_base import license_of  # the card carries the base's licence (issue 5)

    provenance = {**source.provenance(), "source_license": license_of(source)}
    if o.base_model is not None:
        provenance["base_model"] = o.base_model

    def write_gguf() -> None:
        path, notes = export_gguf(source, spec, gguf_out, outtype=o.outtype, static=o.static, force=o.force,
                                  progress=o.progress, job=job,
                                  provenance={**provenance, "weights_origin": weights_note(source, "gguf", o)})
        result.outputs["gguf"] = path
        result.notes += notes

    if o.to == "gguf":
        write_gguf()
        return result
    from ropeconvert.formats.hf import write_hf_export

    # --to both: the two halves are written to temporary paths and put in place together at the end of the group, or
    # neither is (a failing GGUF half leaves the previous outputs as they were)
    with output_group():
        path, notes = write_hf_export(hf_checkpoint(source, o.progress), spec, out, force=o.force, link=o.link,
                                      progress=o.progress,
                                      provenance={**provenance, "weights_origin": weights_note(source, "hf", o)})
        result.outputs["hf"] = path
        result.notes += notes
        if gguf_out is not None:
            write_gguf()
    return result


def default_out(source: Source, spec: RopeSpec, to: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.name.rstrip("/")).name).strip("-.") or "model"
    stem = re.sub(r"\.gguf$", "", stem)
    name = f"{stem}-{spec.method}-{_k(spec.target_context)}"
    return Path(name + ".gguf" if to == "gguf" else name)


def weights_note(source: Source, kind: str, o: ConvertOptions) -> str:
    """Where the export's weights came from, in words, for the card (the truth: the embedded model's HF export holds
    float32 weights dequantized from a Q4_1 GGUF, not the original checkpoint)."""
    if source.kind == "gguf":
        from ropeconvert.formats.inspect import tensor_types

        types = tensor_types(source.reader)
        if kind == "gguf":
            return f"tensor bytes copied unchanged from the source GGUF ({types}); only the rope metadata differs"
        return (f"float32, dequantized from the source GGUF ({types}): as precise as that quantized file, not the "
                f"original full-precision checkpoint; only the rope configuration differs")
    if kind == "gguf":
        return f"converted from the source's safetensors to {(o.outtype or 'f16').upper()} (norms F32)"
    return ("hard-linked" if o.link else "copied byte for byte") + \
        " from the source's safetensors; only the rope configuration differs"


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
