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

from ropeconvert.convert import stack
from ropeconvert.convert.default_search import work_dir
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.spec import RopeSpec, resolve_target
from ropeconvert.errors import SpecError, UnsupportedError
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
    leaderboard: dict[str, Any] | None = None  # --method auto: every candidate's scores (convert/auto.py)

    def to_dict(self) -> dict[str, Any]:
        extra = {"published": [r.to_dict() for r in self.published]} if self.published else {}
        if self.leaderboard is not None:  # --method auto: every candidate's scores, the rule, the winner
            extra["selection"] = self.leaderboard
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
    from ropeconvert.convert.auto_plan import searched
    from ropeconvert.fanout import Workers

    fan = Workers.of(o)
    fan.check()  # --workers without Ray: one line before anything is read
    if fan.wanted and not (o.method == "auto" or o.validate or o.push is not None
                           or searched(o.method, dict(o.knobs or {}))):
        raise SpecError(f"--workers/--ray fan out --method auto, a default search and --validate; --method "
                        f"{o.method} here runs none of them", "drop --workers/--ray, or add --validate")
    say = say or (lambda line: None)
    result = export(o, say)
    for line in result.lines():
        say(line)
    if o.validate or o.push is not None:  # --push implies --validate: only validated exports are published
        from ropeconvert.validators.command import validate_outputs

        result.validation = validate_outputs(result.outputs, o.model, not o.progress, Workers.of(o))
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


def export(o: ConvertOptions, say: Callable[[str], None] | None = None) -> ConvertResult:
    """The conversion itself: every export is checked (GGUF: rope, shapes, output path) before any is written.
    `say` hears the long steps' lines (auto's plan and candidates, a default search's estimate)."""
    say = say or (lambda line: None)
    if o.stack:  # the new method composed on top of the source's existing scaling (convert/stack.py)
        stack.check_options(o)
    source = resolve(o.model, revision=o.revision, progress=o.progress)
    existing, base = stack.prepare(source, o) if o.stack else (None, source.base_rope(o.original_context,
                                                                                      o.replace_scaling))
    knobs = dict(o.knobs or {})
    if o.method != "auto" and o.candidates is not None:
        raise SpecError("--candidates applies to --method auto", "drop it, or pass --method auto")
    if o.method == "dpe" and knobs.get("topk") is not None and knobs.get("scales") is not None:
        from ropeconvert.convert.search.dpe_select import selection_for  # DPE's top-k pairs, measured on the model

        knobs["selected"] = selection_for(source, base, knobs, o.progress)
    choice = None
    if o.method == "auto":  # measure the candidates, then export the winner exactly as `--method WINNER` would
        from ropeconvert.convert.auto import choose

        if knobs.get("factor") is None and knobs.get("target_context") is None:
            raise SpecError("--method auto needs the length to measure at", "pass --target-context N or --factor S")
        _, target = resolve_target(base, knobs.get("factor"), knobs.get("target_context"))
        if o.out is not None:  # refuse an occupied --out before the measuring, not after
            check_output(Path(o.out), o.force, directory=o.to != "gguf", sources=(source.path,))
        work_of = Path(o.out) if o.out is not None else default_out(source, f"auto-{o.to}", target, "hf")
        choice = choose(o, source, base, target, work_of, say)
        method, got = choice.method, choice.resolved
    else:
        method = o.method
        from ropeconvert.convert.auto_plan import method_knobs, precheck, searched

        work = None
        if searched(method, knobs):
            _, target = resolve_target(base, knobs.get("factor"), knobs.get("target_context"))
            future = Path(o.out) if o.out is not None else default_out(source, method, target, o.to)
            precheck(method, base, target, source, o.to)  # a rope the format refuses is refused before the search
            check_output(future, o.force, directory=o.to != "gguf", sources=(source.path,))
            work = work_dir(future)
        got = method_knobs(method, o, source, base, knobs, work, say, None, resume=o.resume, force=o.force)
    spec = got.spec(method) if existing is None else stack.compose(existing, got.spec(method))
    out = Path(o.out) if o.out is not None else default_out(source, spec.method, spec.target_context, o.to)
    gguf_out = None if o.to == "hf" else (out if o.to == "gguf" else Path(str(out) + ".gguf"))
    if o.to != "gguf":  # fail before any slow work; the writers check again (and the source's cached copy)
        check_output(out, o.force, directory=True, sources=(source.path,))
    job = None
    if gguf_out is not None:  # `--to both`: refused before the HF half is written; the rope is computed here once
        from ropeconvert.formats.gguf import check_gguf, export_gguf

        job = check_gguf(source, spec, gguf_out, outtype=o.outtype, static=o.static, force=o.force)
    result = ConvertResult(spec, source, notes=[] if got.origin == "the method's defaults" else [got.origin])
    if existing is not None:
        result.notes.insert(0, stack.describe(spec))
    if choice is not None:
        result.notes = choice.notes + [f"--method auto chose {method}: {choice.leaderboard['reason']}"] + result.notes
        result.leaderboard = choice.leaderboard
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
        return _with_leaderboard(result)
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
    return _with_leaderboard(result)


def _with_leaderboard(result: ConvertResult) -> ConvertResult:
    """--method auto: the leaderboard goes into each export's report directory (validate carries it into
    report.json, the card shows it); the export's own files are the winner's, byte for byte."""
    if result.leaderboard is not None:
        from ropeconvert.convert.auto_report import write

        for path in result.outputs.values():
            write(result.leaderboard, path)
    return result


def default_out(source: Source, method: str, target: int, to: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.name.rstrip("/")).name).strip("-.") or "model"
    stem = re.sub(r"(-\d{5}-of-\d{5})?\.gguf$", "", stem)  # a split's first shard names the model, not the shard
    name = f"{stem}-{method}-{_k(target)}"
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
