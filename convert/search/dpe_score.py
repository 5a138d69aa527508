"""The score of DPE's effective-length detection: 4-needle retrieval at the target length (reference/methods.md
§3.1, §3.3), one forward per prompt.

The prompts are the validators' 4-needle NIAH (validators/niah.py: DPE's template, one key, four 7-digit values
at one depth per quarter, seeded) followed by the right answer, " v1, v2, v3 and v4.", teacher-forced. A value
counts as retrieved when the model's top-1 prediction is right at every one of its tokens; the score is the
fraction retrieved (the reference's fraction of the four values found in a 128-token greedy answer), and the mean
NLL of the value tokens breaks ties. Teacher forcing makes an evaluation one forward instead of a prefill plus
128 decoding steps — what makes a sweep affordable on a CPU — and the NLL separates settings whose greedy answers
would tie.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from ropeconvert.errors import InputError


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]  # [start, stop) of each value's tokens in ids
    values: tuple[str, ...]


def build(tokenizer, corpus_text: str, length: int, seed: int, index: int) -> Prompt:
    """One prompt of about `length` tokens (question + answer), the needles from the validators' generator."""
    from ropeconvert.validators import niah
    from ropeconvert.validators.generate import fit_to_tokens

    sample = niah.make_sample(random.Random(f"dpe-detect-{seed}-{length}-{index}"), len(corpus_text))
    enc = lambda text: list(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    answer: list[int] = []
    spans = []
    for j, value in enumerate(sample.values):
        sep = "" if j == 0 else (" and" if j == len(sample.values) - 1 else ",")
        answer += enc(sep)
        start = len(answer)
        answer += enc(" " + value)
        spans.append((start, len(answer)))
    answer += enc(".")
    count = lambda text: len(tokenizer(text).input_ids)  # noqa: E731
    room = len(corpus_text) - sample.offset
    n_chars = fit_to_tokens(lambda n: niah.build_prompt(corpus_text, sample, n), count, length - len(answer),
                            hi=min(room, length * 8))
    prompt = list(tokenizer(niah.build_prompt(corpus_text, sample, n_chars)).input_ids)
    if len(prompt) + len(answer) < 0.9 * length:
        raise InputError(f"the corpus is too short for a {length}-token needle prompt", "pass --text FILE|DIR")
    return Prompt(tuple(prompt + answer), tuple((len(prompt) + a, len(prompt) + b) for a, b in spans), sample.values)


def score(model, prompts: list[Prompt]) -> tuple[float, float]:
    """(fraction of values retrieved, mean NLL of the value tokens) over `prompts`, under the model's attention."""
    from ropeconvert.validators.perplexity import token_nll

    found, nlls = [], []
    for p in prompts:
        first = p.spans[0][0]
        nll, top1 = token_nll(model, list(p.ids), n_targets=len(p.ids) - first, want_top1=True)
        target = np.asarray(p.ids[first:])
        for a, b in p.spans:
            found.append(bool((top1[a - first:b - first] == target[a - first:b - first]).all()))
            nlls.extend(nll[a - first:b - first])
    return float(np.mean(found)), float(np.mean(nlls))


def map_job(worker, model, position_map, prompts) -> tuple[float, float, float]:
    """One map's 4-needle score on a worker's model: (retrieved, needle NLL, seconds)."""
    from ropeconvert.validators.dpe_attention import attach, detach

    rt = worker.runtime(model)
    t0 = time.perf_counter()  # the map's time, not the worker's first model load
    attach(rt.model, position_map)
    try:
        retrieved, nll = score(rt.model, prompts)
    finally:  # the worker's next job (another candidate, auto's scoring) starts from the model's own attention
        detach(rt.model)
    return retrieved, nll, time.perf_counter() - t0
