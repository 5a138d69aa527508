"""Which methods `--method auto` measures, and how each candidate gets its knobs.

A method is a candidate when the writers of every requested format carry its rope *exactly* for the source's
architecture. The writers themselves answer, on a probe spec of the method at the target: formats/hf_config.py
(Phi-3's config takes only longrope) and formats/gguf_rope.py (dynamic is refused, a position map is written as a
labelled APPROXIMATION: neither is a GGUF candidate; qwen2/qwen3 take no per-pair factors). No second list of what
runs where exists here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ropeconvert.convert.methods import METHODS, build_spec
from ropeconvert.errors import RopeConvertError, SpecError, UnsupportedError

SEARCHED = ("longrope", "dpe")  # candidates whose knobs come from the catalog or a default search
_ONLY_TARGET = ("factor", "target_context")  # the knobs --method auto accepts itself


@dataclass(frozen=True)
class Candidate:
    method: str
    searches: bool = False  # its knobs need the default search (no catalog entry)

    def resolve(self, o, source, base, target: int, work: Path, say: Callable[[str], None], runtime,
                pool=None) -> "Resolved":
        """Exactly what `--method M` without a file gives (convert/pipeline.py calls method_knobs the same way);
        a default search fans out on auto's Ray `pool` when there is one (its actors hold every CPU/GPU)."""
        return method_knobs(self.method, o, source, base, {"target_context": target}, work / self.method, say,
                            runtime, resume=True, force=False, pool=pool)


@dataclass(frozen=True)
class Resolved:
    knobs: dict[str, Any]
    origin: str  # where the knobs came from, in words
    base: Any  # the BaseRope the spec is built on (a catalog entry may treat another length as original)

    def spec(self, method: str):
        return build_spec(method, self.base, **self.knobs)


def searched(method: str, knobs: dict[str, Any]) -> bool:
    """Whether `method` with these knobs needs its default search (or the catalog): longrope without --factors, dpe
    without --scales or --dpe-map."""
    return (method == "longrope" and knobs.get("factors") is None) or \
        (method == "dpe" and knobs.get("scales") is None and knobs.get("dpe_map") is None)


def method_knobs(method: str, o, source, base, knobs: dict[str, Any], work: Path | None, say, runtime, *,
                 resume: bool, force: bool, pool=None) -> Resolved:
    """The knobs of a searched method given without its file: the catalog's entry, else the default search's
    output (run now in `work`, or found complete there); other methods' knobs are returned as given."""
    from ropeconvert.convert import default_search as D
    from ropeconvert.convert.spec import resolve_target

    knobs = dict(knobs)
    if not searched(method, knobs):
        return Resolved(knobs, "the method's defaults", base)
    _, target = resolve_target(base, knobs.get("factor"), knobs.get("target_context"))
    if method == "longrope":
        from ropeconvert.convert.catalog import from_catalog

        found = from_catalog(source.config(), knobs, o.original_context)
        if found is not None:
            entry, knobs = found
            return Resolved(knobs, f"factors from the catalog: {entry.name}, from {entry.source}"
                            + (f" ({entry.note})" if entry.note else ""),
                            source.base_rope(entry.original_context, o.replace_scaling))
    if o.no_search:
        D.refuse(method, o.search_budget)
    # the work directory as the user sees it: `<out>.search`, or `<out>.auto/METHOD` under --method auto
    shown = work.name if work.suffix == ".search" else f"{work.parent.name}/{work.name}"
    common = dict(seed=o.seed, text=o.text, out=work, force=force, progress=o.progress,
                  original_context=o.original_context)
    from ropeconvert.fanout import Workers

    fan = Workers.of(o)  # --workers/--ray: the search's evaluations fan out (then it loads no model here)
    if method == "longrope":
        done = work / "factors.json"
        if not (resume and done.exists()):
            opts = D.longrope_options(o.model, target, o.search_budget, resume=resume and work.exists(),
                                      fan=fan, **common)
            done = D.run(opts, source, None if fan.wanted else runtime, say, pool)
        return Resolved({**knobs, "factors": done, "target_context": target, "factor": None},
                        f"factors from the default search ({o.search_budget} evaluations, seed {o.seed}), kept in "
                        f"{shown}/ (pass --factors {shown}/factors.json to reuse them)", base)
    done = work / "dpe_map.json"
    # the detection takes the window and top-k pairs; the map it writes holds them (and the target)
    window, topk = knobs.pop("window", None), knobs.pop("topk", None)
    if not (resume and done.exists()):
        opts = D.dpe_options(o.model, target, o.search_budget, base, resume=resume and work.exists(),
                             window=window, topk=topk, fan=fan, **common)
        done = D.run(opts, source, None if fan.wanted else runtime, say, pool)
    return Resolved({k: v for k, v in knobs.items() if k not in ("factor", "target_context")} | {"dpe_map": done},
                    f"map from the default detection ({o.search_budget} evaluations at most), kept in "
                    f"{shown}/ (pass --dpe-map {shown}/dpe_map.json to reuse it)", base)


def plan(o, source, base, target: int) -> tuple[list[Candidate], list[str]]:
    """(candidates, the methods left out and why); refuses a --candidates entry the format cannot carry."""
    unknown = sorted(k for k, v in (o.knobs or {}).items() if v is not None and k not in _ONLY_TARGET)
    if unknown:
        raise SpecError(f"{', '.join('--' + k.replace('_', '-') for k in unknown)} does not apply to --method auto "
                        "(it measures each candidate with its defaults)",
                        "drop it, or pass --method METHOD to set a method's knobs")
    asked = None
    if o.candidates is not None:
        asked = [c.strip() for c in o.candidates.split(",") if c.strip()]
        if not asked:
            raise SpecError("--candidates is empty", "pass method names, e.g. --candidates yarn,ntk,longrope")
        for name in asked:
            if name == "auto":
                raise SpecError("--candidates cannot name auto", "pass method names, e.g. --candidates yarn,ntk")
            METHODS.get(name)  # an unknown name: one line with "did you mean"
    formats = ("hf", "gguf") if o.to == "both" else (o.to,)
    out, skipped = [], []
    for name, _ in METHODS.items():
        if asked is not None and name not in asked:
            continue
        why = cannot_carry(name, base, target, source, formats)
        if why is None and o.no_search and name in SEARCHED and not _in_catalog(name, source, target, o):
            why = "--no-search, and no catalog entry" if name == "longrope" else "--no-search"
        if why is not None:
            if asked is not None:
                raise UnsupportedError(f"--candidates {name}: {why}",
                                       f"drop it; candidates for --to {o.to} here: {_carried(base, target, source, formats, o)}")
            skipped.append(f"{name} ({why})")
            continue
        out.append(Candidate(name, searches=name in SEARCHED and not _in_catalog(name, source, target, o)))
    if not out:
        raise UnsupportedError(f"--method auto has no candidate for --to {o.to} here", "pass --method METHOD")
    return out, skipped


def cannot_carry(method: str, base, target: int, source, formats: tuple[str, ...]) -> str | None:
    """Why `formats` cannot carry `method` exactly for this source, or None when they can."""
    try:
        probe = _probe(method, base, target)
    except RopeConvertError as e:
        return f"needs knobs auto does not choose: {e.problem}"
    for fmt in formats:
        try:
            if fmt == "hf":
                from ropeconvert.formats.hf_config import hf_config_for

                hf_config_for(probe, source.config())
            else:
                from ropeconvert.formats.gguf_rope import gguf_rope

                rope = gguf_rope(probe, source.arch)
                if any(n.startswith("APPROXIMATION") for n in rope.notes):
                    return "a GGUF carries only an approximation of it"
        except UnsupportedError as e:
            return f"{fmt.upper()}: {e.problem}"
    return None


def precheck(method: str, base, target: int, source, to: str) -> None:
    """Refuse, with the writers' own error, a searched method the export cannot hold — before the search runs."""
    probe = _probe(method, base, target)
    if to != "hf":
        from ropeconvert.formats.gguf_rope import gguf_rope

        gguf_rope(probe, source.arch)
    if to != "gguf":
        from ropeconvert.formats.hf_config import hf_config_for

        hf_config_for(probe, source.config())


def _probe(method: str, base, target: int):
    """The method's spec at the target with its defaults; searched methods with placeholder numbers of their kind."""
    s = target / base.original_context
    if method == "longrope":
        return build_spec(method, base, factors=[s] * base.n_pairs, target_context=target)
    if method == "dpe":
        return build_spec(method, base, scales=f"{s:g}", target_context=target)
    return build_spec(method, base, target_context=target)


def _in_catalog(method: str, source, target: int, o) -> bool:
    if method != "longrope":
        return False
    from ropeconvert.convert.catalog import from_catalog

    return from_catalog(source.config(), {"target_context": target}, o.original_context) is not None


def _carried(base, target: int, source, formats, o) -> str:
    names = [n for n, _ in METHODS.items() if cannot_carry(n, base, target, source, formats) is None]
    return ", ".join(names) or "none"
