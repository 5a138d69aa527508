"""RULER's metrics, its per-length average and its effective length.

- Metrics: NVIDIA/RULER `scripts/eval/synthetic/constants.py`. string_match_all: per sample the fraction of its
  references found in the prediction; string_match_part: 1 when any reference is found; both case-insensitive
  substring tests, averaged over samples, × 100, rounded to 2 decimals. Predictions are first cleaned as
  `scripts/eval/evaluate.py` (`postprocess_pred`) does: stripped, control characters turned into newlines,
  stripped again.
- The RULER score at a length is the mean of the task scores there (the papers report the 13-task mean).
- Effective length (RULER paper §4 and README): the longest length whose average reaches the threshold, 85.6 by
  default (Llama-2-7B's score at 4K). A relative threshold is the base model's own average at its original
  context, for models far weaker than Llama-2-7B. RULER writes "<4K" when no length passes and ">128K" when the
  longest measured one does; `EffectiveLength.label` writes "<4096" and "≥16384".
- `interval95`: a Wilson score interval for the mean of per-sample scores (exact for 0/1 scores), so a report can
  say how far its few samples pin a score down (RULER itself uses 500 samples per task and length).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ropeconvert.errors import InputError

RULER_THRESHOLD = 85.6
_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction.strip()).strip()


def _pairs(predictions: Sequence[str], references: Sequence[Sequence[str]]):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    for ref in references:
        if isinstance(ref, str) or not ref:
            raise ValueError("each reference must be a non-empty list of strings")
    return [(postprocess(p).lower(), [r.lower() for r in ref]) for p, ref in zip(predictions, references)]


def match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per sample: the fraction of its references that occur in its prediction."""
    return [sum(r in p for r in ref) / len(ref) for p, ref in _pairs(predictions, references)]


def match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per sample: 1.0 when any of its references occurs in its prediction."""
    return [float(any(r in p for r in ref)) for p, ref in _pairs(predictions, references)]


PER_SAMPLE = {"string_match_all": match_all, "string_match_part": match_part}


def aggregate(per_sample: list[float]) -> float:
    if not per_sample:
        raise InputError("no predictions to score", "generate at least one sample (--samples ≥ 1)")
    return round(sum(per_sample) / len(per_sample) * 100, 2)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    return aggregate(match_all(predictions, references))


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    return aggregate(match_part(predictions, references))


def ruler_average(task_scores: Mapping[str, float]) -> float:
    """The RULER score at one length: the mean of the task scores there."""
    if not task_scores:
        raise InputError("no RULER task was scored at this length", "run at least one task")
    return sum(task_scores.values()) / len(task_scores)


@dataclass(frozen=True)
class EffectiveLength:
    length: int | None  # the longest measured length whose average ≥ threshold; None when none reaches it
    threshold: float
    shortest: int  # the shortest and longest lengths measured
    longest: int

    @property
    def label(self) -> str:
        if self.length is None:
            return f"<{self.shortest}"
        return f"≥{self.length}" if self.length == self.longest else str(self.length)


def effective_length(lengths: Sequence[int], averages: Sequence[float],
                     threshold: float = RULER_THRESHOLD) -> EffectiveLength:
    """The longest length whose RULER average is at least `threshold`."""
    if not lengths or len(lengths) != len(averages):
        raise ValueError(f"{len(lengths)} lengths for {len(averages)} averages")
    passing = [n for n, a in zip(lengths, averages) if a >= threshold]
    return EffectiveLength(max(passing) if passing else None, float(threshold), min(lengths), max(lengths))


def relative_threshold(lengths: Sequence[int], base_averages: Sequence[float],
                       original_context: int) -> tuple[float, int]:
    """The relative mode's threshold: the base model's average at its original context (at the longest measured
    length not above it when that exact length was not run), and the length it was read at."""
    if len(lengths) != len(base_averages):
        raise ValueError(f"{len(lengths)} lengths for {len(base_averages)} averages")
    within = [(n, a) for n, a in zip(lengths, base_averages) if n <= original_context]
    if not within:
        raise InputError(f"the relative threshold is the base model's RULER average at its original context "
                         f"({original_context} tokens), and no length at or below it was measured",
                         f"add {original_context} to the RULER lengths")
    at, average = max(within)
    return average, at


def interval95(per_sample: Sequence[float]) -> tuple[float, float]:
    """Wilson 95% interval, in percent, for the mean of per-sample scores in [0, 1]."""
    n = len(per_sample)
    if n == 0:
        raise InputError("no samples to bound", "generate at least one sample (--samples ≥ 1)")
    p, z = sum(per_sample) / n, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half) * 100, 2), round(min(1.0, centre + half) * 100, 2)
