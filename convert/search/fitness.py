"""Fitness of a candidate rope on a loaded model: perplexity of scored tokens, the rope swapped in place.

A `Sample` is one input sequence plus a boolean `scored` mask over its positions: position j is scored when the
model's prediction of ids[j] (from ids[:j]) counts. Plain perplexity scores every text token; LongRoPE2's
needle-driven perplexity scores only the needle's answer tokens. The mask is built together with the ids
(convert/search/needle.py), so it cannot drift from them — the reference code saved it as `cus_label` and read
`cus_labels`, silently scoring every token (reference/methods.md §7 pitfall 5).

Fitness = mean over samples of exp(mean NLL of the sample's scored tokens): with one window per document this is
the LongRoPE search's `compute_perplexity --truncate` (and validators.perplexity.document_ppl with truncate=True).
Samples of equal length run as one batch where that helps (CUDA); the LM head only sees the scored rows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ropeconvert.convert.spec import BaseRope, RopeSpec
from ropeconvert.errors import InputError
from ropeconvert.validators.perplexity import hidden_states, nll_from_hidden
from ropeconvert.validators.runtime import set_rope


@dataclass(frozen=True)
class Sample:
    name: str
    ids: tuple[int, ...]
    scored: tuple[bool, ...]  # same length as ids; scored[0] is always False (nothing predicts the first token)

    def __post_init__(self):
        if len(self.ids) != len(self.scored):
            raise ValueError(f"sample {self.name}: {len(self.ids)} ids but {len(self.scored)} mask entries")
        if self.scored and self.scored[0]:
            raise ValueError(f"sample {self.name}: the first token cannot be scored")
        if not any(self.scored):
            raise ValueError(f"sample {self.name}: no token is scored")


def text_sample(name: str, text_ids, length: int, bos_id: int | None) -> Sample:
    """One window of `length` tokens, [BOS] + the first length−1 text tokens, every text token scored — the
    LongRoPE search's `--truncate` protocol (one window per document)."""
    body = list(text_ids[:length - 1 if bos_id is not None else length])
    ids = ([bos_id] if bos_id is not None else []) + body
    if len(ids) < length:
        raise InputError(f"document {name} has {len(body)} tokens, fewer than the {length} a window needs")
    return Sample(name, tuple(int(i) for i in ids), (False,) + (True,) * (len(ids) - 1))


@torch.inference_mode()
def sample_nll(model: nn.Module, samples: list[Sample], batch_size: int = 1) -> list[float]:
    """Mean NLL of the scored tokens of each sample, under the rope the model has now."""
    device = next(model.parameters()).device
    out: list[float] = [math.nan] * len(samples)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_length.setdefault(len(s.ids), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            ids = torch.tensor([samples[i].ids for i in batch], dtype=torch.long, device=device)
            hidden = hidden_states(model, ids)
            for row, i in enumerate(batch):
                pos = torch.as_tensor(np.flatnonzero(samples[i].scored), dtype=torch.long, device=device)
                nll, _ = nll_from_hidden(model, hidden[row, pos - 1], ids[row, pos])
                out[i] = float(nll.double().mean())
            del hidden
    return out


def aggregate(nlls: list[float]) -> float:
    """Mean over samples of the per-sample perplexity; inf if any sample overflowed."""
    values = [math.exp(v) if math.isfinite(v) and v < 700 else math.inf for v in nlls]
    return float(np.mean(values))


class Fitness:
    """Perplexity of `samples` under a spec, on one loaded model (the rope swapped in place per call)."""

    def __init__(self, model: nn.Module, base: BaseRope, samples: list[Sample], batch_size: int | None = None):
        if not samples:
            raise InputError("no fitness samples")
        self.model, self.base, self.samples = model, base, samples
        if batch_size is None:  # batching pays on a GPU; on a CPU it only multiplies the activation memory
            batch_size = len(samples) if next(model.parameters()).device.type == "cuda" else 1
        self.batch_size = max(1, batch_size)
        self.calls = 0

    def __call__(self, spec: RopeSpec | None) -> float:
        set_rope(self.model, spec, self.base)  # None: the model's own trained rope
        self.calls += 1
        return aggregate(sample_nll(self.model, self.samples, self.batch_size))


def fitness_job(worker, model, base: BaseRope, samples: list[Sample], spec: RopeSpec | None) -> tuple[float, float]:
    """One candidate on a worker's model (ropeconvert/fanout.py): (fitness, seconds)."""
    start = time.perf_counter()
    value = Fitness(worker.runtime(model).model, base, samples)(spec)
    return value, time.perf_counter() - start


def describe_job(worker, model) -> dict:
    """The runtime a worker measures on (the search log records it)."""
    return worker.runtime(model).describe()
