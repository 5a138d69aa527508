"""The perplexity validation task: validators/perplexity.py's sweep over the corpus documents at every length of
the sweep, base vs extended on the same token ids (tokenised once with the extended model's tokenizer)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ropeconvert.validators import task_registry as T

SHORT_CONTEXT_TOLERANCE = 1.5  # extended ppl within the original context may be at most this × the base's


@dataclass
class Prepared:
    lengths: list[int]
    ids: dict[str, list[int]]  # document name → token ids (only as much of each as the sweep can use)
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def documents(self) -> list[str]:
        return list(self.ids)


class PplTask(T.TaskDefaults):
    name = "ppl"
    title = "Perplexity vs length"
    higher_is_better = False
    selectors = ("ppl",)

    def prepare(self, ctx: T.TaskContext) -> Prepared:
        from ropeconvert.validators.corpus import check_lengths, token_ids
        from ropeconvert.validators.perplexity import tokens_needed

        o, lengths = ctx.options, list(ctx.lengths)
        need = tokens_needed(lengths, o.stride, o.truncate, o.max_windows)
        ids = token_ids(ctx.documents, ctx.tokenizer, need if need < 1 << 40 else None, min(lengths) - 1, o.documents)
        check_lengths(ctx.corpus_name, ids, "", ctx.tokenizer, ppl=lengths, bos=ctx.bos)
        return Prepared(lengths, ids, {"truncate": o.truncate, "stride": o.stride, "max_windows": o.max_windows,
                                       "bos": ctx.bos})

    def run(self, runtime, prepared: Prepared, label: str, progress: bool):
        from ropeconvert.validators.perplexity import sweep

        p = prepared.protocol
        return sweep(runtime.scorer, prepared.ids, prepared.lengths, bos_id=runtime.bos_id, stride=p["stride"],
                     truncate=p["truncate"], max_windows=p["max_windows"], progress=progress, label=f"{label} ppl")

    def blank(self, result):
        from ropeconvert.validators.perplexity import PplResult

        none = [None] * len(result.lengths)
        return PplResult(result.lengths, none, {doc: list(none) for doc in result.per_document})

    def record(self, prepared: Prepared, base, extended) -> dict[str, Any]:
        return {"lengths": extended.lengths, "base": base.mean, "extended": extended.mean,
                "per_document": {"base": base.per_document, "extended": extended.per_document},
                "protocol": dict(prepared.protocol)}

    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        out = []
        ext = [(n, e) for n, e in zip(record["lengths"], record["extended"]) if e is not None]
        bad = [n for n, e in ext if not math.isfinite(e)]
        out.append(T.check("ppl_finite", ext and not bad, f"non-finite at {bad}" if bad else
                           (f"{len(ext)} lengths finite" if ext else "no length could be measured")))
        pairs = [(n, b, e) for n, b, e in zip(record["lengths"], record["base"], record["extended"])
                 if b is not None and e is not None]
        far = [(n, b, e) for n, b, e in pairs if n > original]
        if far:
            worse = [n for n, b, e in far if not e < b]
            out.append(T.check("ppl_extended_below_base", not worse, "; ".join(
                f"{n}: {e:.3g} vs base {b:.3g}" for n, b, e in far)))
        near = [(n, b, e) for n, b, e in pairs if n <= original]
        if near:
            worse = [n for n, b, e in near if not e <= SHORT_CONTEXT_TOLERANCE * b]
            out.append(T.check("ppl_short_context_kept", not worse, "; ".join(
                f"{n}: {e:.3g} vs base {b:.3g} (limit ×{SHORT_CONTEXT_TOLERANCE:g})" for n, b, e in near)))
        return out

    def figure(self, record, original, target):
        from ropeconvert.validators.report_plots import plot_ppl

        return plot_ppl(record, original, target)

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        return T.length_rows("perplexity", record, _f)

    def card(self, record: dict[str, Any]) -> str:
        return T.length_card("Perplexity (lower is better)", record, T.card_float)


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}" if v < 1000 else f"{v:.4g}"


T.register(PplTask())
