"""Multi-needle retrieval: DPE's 4-needle NIAH (reference/methods.md §3.3), haystack from the text corpus.

One key, four 7-digit values (DPE's generator uses num_digits=7), each needle
"One of the special magic numbers for {key} is: {value}." placed at a random depth in each quarter of [0, 0.99]
(snapped forward to the next sentence end so no word is cut); greedy decoding with 128 new tokens; the score of a
sample is the fraction of the four values that appear in the output. Samples are seeded: base and extended models
get the same prompts.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ropeconvert.validators.generate import fit_to_tokens

TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
            "you about the numbers afterwards.\n{context}\nWhat are all the special magic numbers for {query} "
            "mentioned in the provided text? The special magic numbers for {query} mentioned in the provided text are")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
N_NEEDLES, N_DIGITS, MAX_NEW_TOKENS = 4, 7, 128
SENTENCE_END = re.compile(r"[.!?][\"'\u201d]?\s+")
# keys in RULER's adjective-noun style; a fixed list keeps the task offline and reproducible
_ADJ = ("quiet", "amber", "brisk", "hollow", "violet", "sturdy", "gentle", "frozen", "rapid", "silent", "dusty", "bold")
_NOUN = ("harbor", "lantern", "meadow", "pigeon", "quartz", "saddle", "thimble", "willow", "canyon", "falcon", "parcel")


@dataclass(frozen=True)
class Sample:
    key: str
    values: tuple[str, ...]
    depths: tuple[float, ...]
    offset: int  # where the haystack starts in the corpus text


def make_sample(rng: random.Random, corpus_len: int) -> Sample:
    key = f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"
    values = tuple(str(rng.randint(10 ** (N_DIGITS - 1), 10 ** N_DIGITS - 1)) for _ in range(N_NEEDLES))
    # one depth in each of the four equal segments of [0, 0.99]
    seg = 0.99 / N_NEEDLES
    depths = tuple(rng.uniform(k * seg, (k + 1) * seg) for k in range(N_NEEDLES))
    return Sample(key, values, depths, rng.randrange(0, max(1, corpus_len // 2)))


def _sentence_start(text: str, at: int) -> int:
    """The first position at or after `at` that begins a sentence (len(text) if none)."""
    if at <= 0:
        return 0
    match = SENTENCE_END.search(text, at - 1)
    return match.end() if match else len(text)


def build_prompt(corpus: str, sample: Sample, n_chars: int) -> str:
    start = _sentence_start(corpus, sample.offset)  # the haystack starts and the needles sit at sentence starts
    hay = corpus[start:start + n_chars]
    pieces, last = [], 0
    for depth, value in zip(sample.depths, sample.values):
        at = max(_sentence_start(hay, int(depth * len(hay))), last)
        pieces += [hay[last:at], NEEDLE.format(key=sample.key, value=value) + " "]
        last = at
    pieces.append(hay[last:])
    return TEMPLATE.format(context="".join(pieces).strip(), query=sample.key)


def score(response: str, values: tuple[str, ...]) -> float:
    return sum(v in response for v in values) / len(values)


@dataclass
class NiahResult:
    lengths: list[int]
    score: list[float]  # mean fraction of needles recalled, per length
    samples: list[dict] = field(default_factory=list)


def run(runtime, corpus_text: str, lengths: list[int], samples: int, *, seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True, label: str = "niah") -> NiahResult:
    from tqdm.auto import tqdm

    tok = runtime.tokenizer

    def count(text: str) -> int:
        return len(tok(text).input_ids)

    scores, records = [], []
    with tqdm(total=len(lengths) * samples, desc=label, unit="prompt", disable=not progress, leave=False) as bar:
        for length in lengths:
            total = 0.0
            for s in range(samples):
                sample = make_sample(random.Random(f"{seed}-{length}-{s}"), len(corpus_text))
                room = len(corpus_text) - sample.offset
                n_chars = fit_to_tokens(lambda n: build_prompt(corpus_text, sample, n), count, length,
                                        hi=min(room, length * 8))
                ids = tok(build_prompt(corpus_text, sample, n_chars)).input_ids
                response = tok.decode(runtime.greedy(ids, max_new_tokens),
                                      skip_special_tokens=True)
                value = score(response, sample.values)
                total += value
                records.append({"length": length, "sample": s, "tokens": len(ids), "key": sample.key,
                                "values": list(sample.values), "response": response, "score": value})
                bar.update(1)
            scores.append(round(total / samples, 6))
    return NiahResult(list(lengths), scores, records)
