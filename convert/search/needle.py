"""LongRoPE2's needle-driven perplexity samples (arXiv 2502.20082 App. C; reference
`examples/longrope2/pg19_needle_llama3.py`).

A book is the haystack; a 7-digit magic number is planted in it, a retrieval question closes the text, and the
answer follows. Only the answer's number tokens are scored, so the fitness measures whether the model can still
reach the needle across the whole window — plain perplexity is dominated by local context.

Built at the token level, like the reference: [BOS] + intro + haystack[:at] + needle + haystack[at:] + question +
answer, sized to exactly `length` tokens. The scored mask is made from the same pieces in the same step, which is
what makes the reference's `cus_label`/`cus_labels` mix-up impossible here. The needle sits at a depth per sample
(the paper puts it at the start — depth 0; the reference code spreads 10 depths per book), snapped forward to just
after a newline token as the reference does, so it starts a line.
"""
from __future__ import annotations

import random

from ropeconvert.convert.search.fitness import Sample
from ropeconvert.errors import InputError

INTRO = ("A special magic number is hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the number afterwards.\n")
NEEDLE = "\nOne of the special magic numbers for {key} is: {value}.\n"
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
KEY = "wandering-age"  # the reference generator's key
SNAP_WINDOW = 2048  # tokens searched forward for a newline before giving up and inserting mid-line


def needle_value(seed: int, index: int) -> str:
    return str(random.Random(f"longrope2-needle-{seed}-{index}").randint(1_000_000, 9_999_999))


def needle_sample(tokenizer, name: str, haystack_ids, length: int, depth: float, value: str,
                  bos_id: int | None, key: str = KEY) -> Sample:
    """One needle sample of exactly `length` tokens; scored = the tokens of the answer's number."""
    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    head = ([bos_id] if bos_id is not None else []) + enc(INTRO)
    needle = enc(NEEDLE.format(key=key, value=value))
    question = enc(QUESTION.format(key=key))
    answer = enc(" " + value)
    number = [any(ch.isdigit() for ch in tokenizer.decode([t])) for t in answer]
    n_hay = length - len(head) - len(needle) - len(question) - len(answer)
    if n_hay < 1 or len(haystack_ids) < n_hay:
        raise InputError(f"document {name} has {len(haystack_ids)} tokens; a {length}-token needle sample needs "
                         f"{max(n_hay, 1)} of haystack", "raise --target-context or use longer documents (--text)")
    hay = [int(t) for t in haystack_ids[:n_hay]]
    at = _line_start(tokenizer, hay, int(depth * n_hay)) if depth > 0 else 0
    ids = head + hay[:at] + needle + hay[at:] + question + answer
    scored = [False] * (len(ids) - len(answer)) + number
    return Sample(name, tuple(ids), tuple(scored))


def _line_start(tokenizer, hay: list[int], at: int) -> int:
    """The first position at or after `at` that follows a newline token (`at` itself if none is near)."""
    for j in range(max(at - 1, 0), min(len(hay), at + SNAP_WINDOW)):
        if "\n" in tokenizer.decode([hay[j]]):
            return j + 1
    return at


def needle_samples(tokenizer, documents: list[tuple[str, list[int]]], length: int, bos_id: int | None,
                   seed: int) -> list[Sample]:
    """One sample per document, depths spread evenly over [0, 1): the first at the start (the paper's placement)."""
    k = len(documents)
    return [needle_sample(tokenizer, name, ids, length, j / k, needle_value(seed, j), bos_id)
            for j, (name, ids) in enumerate(documents)]
