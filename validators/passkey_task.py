"""The passkey validation task: validators/passkey.py's lengths × depths grid, N seeded trials per cell, the same
keys for base and extended."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ropeconvert.validators import task_registry as T


@dataclass
class Prepared:
    lengths: list[int]
    depths: list[float]
    trials: int
    seed: int


class PasskeyTask(T.TaskDefaults):
    name = "passkey"
    title = "Passkey retrieval accuracy"
    higher_is_better = True
    selectors = ("passkey",)

    def prepare(self, ctx: T.TaskContext) -> Prepared:
        o = ctx.options
        return Prepared(list(o.passkey_lengths or ctx.lengths), list(o.depths), o.trials, o.seed)

    def run(self, runtime, prepared: Prepared, label: str, progress: bool):
        from ropeconvert.validators import passkey

        return passkey.run(runtime, prepared.lengths, prepared.depths, prepared.trials, seed=prepared.seed,
                           progress=progress, label=f"{label} passkey")

    def blank(self, result):
        from ropeconvert.validators.passkey import PasskeyResult

        return PasskeyResult(result.lengths, result.depths, result.trials,
                             [[None] * len(result.depths) for _ in result.lengths], result.tokens)

    def record(self, prepared: Prepared, base, extended) -> dict[str, Any]:
        return {"lengths": extended.lengths, "depths": extended.depths, "trials": extended.trials,
                "base": base.accuracy, "extended": extended.accuracy, "tokens": extended.tokens,
                "samples": {"base": base.samples, "extended": extended.samples}}

    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        rows = [(n, float(np.mean(b)), float(np.mean(e)))
                for n, b, e in zip(record["lengths"], record["base"], record["extended"])
                if None not in b and None not in e]  # null: that side was not measured (its llama.cpp crashed)
        return T.not_worse("passkey_not_worse", [r for r in rows if r[0] > original])

    def figure(self, record, original, target):
        from ropeconvert.validators.report_plots import plot_passkey

        return plot_passkey(record, original)

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        return [("passkey", str(n), _pct(None if None in b else float(np.mean(b))),
                 _pct(None if None in e else float(np.mean(e))))
                for n, b, e in zip(record["lengths"], record["base"], record["extended"])]

    def card(self, record: dict[str, Any]) -> str:
        rows = [[T.count(n), T.card_pct(_mean(b)), T.card_pct(_mean(e))]
                for n, b, e in T.side_by_side(record, "lengths", "base", "extended")]
        return (f"### Passkey retrieval (accuracy, mean over {len(record.get('depths') or [])} depths × "
                f"{record.get('trials', '?')} trials)\n\n" + T.table(["length", "base", "extended"], rows))


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _mean(values: list[float | None] | None) -> float | None:
    """Accuracy over the depths measured at one length."""
    measured = [v for v in values or [] if v is not None]
    return sum(measured) / len(measured) if measured else None


T.register(PasskeyTask())
