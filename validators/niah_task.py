"""The 4-needle validation task: validators/niah.py's DPE template at every length, the haystack from the corpus,
the same seeded needles for base and extended."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropeconvert.validators import task_registry as T
from ropeconvert.validators.passkey_task import _pct


@dataclass
class Prepared:
    lengths: list[int]
    haystack: str
    samples: int
    seed: int


class NiahTask(T.TaskDefaults):
    name = "niah"
    title = "Needle in a haystack"
    higher_is_better = True
    selectors = ("niah",)

    def prepare(self, ctx: T.TaskContext) -> Prepared:
        from ropeconvert.validators.corpus import check_lengths

        o = ctx.options
        lengths = list(o.niah_lengths or ctx.lengths)
        haystack = "\n\n".join(d.text for d in ctx.documents)
        check_lengths(ctx.corpus_name, {}, haystack, ctx.tokenizer, niah=lengths, bos=ctx.bos)
        return Prepared(lengths, haystack, o.niah_samples, o.seed)

    def run(self, runtime, prepared: Prepared, label: str, progress: bool):
        from ropeconvert.validators import niah

        return niah.run(runtime, prepared.haystack, prepared.lengths, prepared.samples, seed=prepared.seed,
                        progress=progress, label=f"{label} niah")

    def blank(self, result):
        from ropeconvert.validators.niah import NiahResult

        return NiahResult(result.lengths, [None] * len(result.lengths))

    def record(self, prepared: Prepared, base, extended) -> dict[str, Any]:
        return {"lengths": extended.lengths, "base": base.score, "extended": extended.score,
                "samples_per_length": prepared.samples, "samples": {"base": base.samples, "extended": extended.samples}}

    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        rows = [(n, b, e) for n, b, e in zip(record["lengths"], record["base"], record["extended"])
                if b is not None and e is not None]
        return T.not_worse("niah_not_worse", [r for r in rows if r[0] > original])

    def figure(self, record, original, target):
        from ropeconvert.validators.report_plots import plot_niah

        return plot_niah(record, original)

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        return T.length_rows("4-needle", record, _pct)

    def card(self, record: dict[str, Any]) -> str:
        return T.length_card("Needle in a haystack (accuracy)", record, T.card_pct)


T.register(NiahTask())
