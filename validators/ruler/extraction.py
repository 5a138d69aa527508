"""RULER's aggregation tasks: common words extraction (cwe) and frequent words extraction (fwe).

cwe follows NVIDIA/RULER `scripts/data/synthetic/common_words_extraction.py`:
- n distinct words from the wonderwords pool (words.common_words_pool); the first num_cw (10) are the common
  words, repeated freq_cw (30) times, the others freq_ucw (3) times; the list shuffled and numbered
  "1. w 2. w …"; below 4096 tokens RULER uses 6 and 1 repeats instead;
- one worked example first (num_fewshot = 1): 40 words repeated 10/3 times (20 words, 3/1 below 4096 tokens),
  the whole template with its answer prefix, then " 1. w … 10. w"; then a newline and the task;
- the answer is the 10 common words. RULER switches to a larger English list (english_words.json, a download)
  when a prompt needs more distinct words than the pool holds; here that length is refused (TaskNotRun).

fwe follows `scripts/data/synthetic/freq_words_extraction.py`:
- a vocabulary of (length − 50) // 50 distinct random six-letter lower-case words, shuffled, the first replaced
  by "..." (noise); word k of the vocabulary appears int(n · k^−α / ζ(α)) times (α = 2), shuffled, joined by
  spaces; the answer is vocabulary words 2 to 4 (the three most frequent after the noise);
- n is searched so the prompt plus 50 answer tokens fits; the fewest words is the smallest n at which word 4 is
  strictly more frequent than word 5 (below that the top three are not defined).
"""
from __future__ import annotations

import random
import string

from ropeconvert.validators.ruler.config import FAMILIES, Plan, TaskConfig
from ropeconvert.validators.ruler.words import common_words_pool

SHORT = 4096  # RULER: `if args.max_seq_length < 4096` picks the lighter repeats
CODED_WORDLEN = 6


def _numbered(words) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_plan(cfg: TaskConfig, rng: random.Random, length: int) -> Plan:
    num_cw, family = int(cfg.args["num_cw"]), FAMILIES["common_words_extraction"]
    full = family.template + family.answer_prefix
    if length < SHORT:
        shot_words, shot_repeats, repeats = 20, (3, 1), (6, 1)
    else:
        shot_words, shot_repeats, repeats = 40, (10, 3), (int(cfg.args["freq_cw"]), int(cfg.args["freq_ucw"]))
    pool = common_words_pool()

    def example(words: list[str], common_repeats: int, uncommon_repeats: int, order: random.Random):
        common, uncommon = words[:num_cw], words[num_cw:]
        listing = common * common_repeats + uncommon * uncommon_repeats
        order.shuffle(listing)
        return _numbered(listing), common

    shot_context, shot_answer = example(rng.sample(pool, shot_words), *shot_repeats, rng)
    shot = full.format(num_cw=num_cw, context=shot_context, query="") + " " + _numbered(shot_answer)
    words = rng.sample(pool, len(pool))  # a random order; a prompt of n words takes the first n
    order_seed = rng.getrandbits(64)
    outputs = tuple(words[:num_cw])

    def render(n: int) -> tuple[str, str, tuple[str, ...]]:
        context, _ = example(words[:n], *repeats, random.Random(f"{order_seed}:{n}"))
        text = shot + "\n" + full.format(num_cw=num_cw, context=context, query="")
        cut = text.rfind(family.answer_prefix[:10])
        return text[:cut], text[cut:], outputs

    return Plan(render, num_cw, 64, len(pool), "words")


def zeta(alpha: float) -> float:
    """Riemann ζ(α) for α > 1 (scipy.special.zeta in RULER): a partial sum plus its Euler–Maclaurin tail."""
    n = 64
    head = sum(k ** -alpha for k in range(1, n))
    tail = n ** (1 - alpha) / (alpha - 1) + n ** -alpha / 2 + alpha * n ** (-alpha - 1) / 12
    return head + tail - alpha * (alpha + 1) * (alpha + 2) * n ** (-alpha - 3) / 720


def fwe_counts(n: int, vocab_size: int, alpha: float) -> list[int]:
    z = zeta(alpha)
    return [int(n * (k ** -alpha) / z) for k in range(1, vocab_size + 1)]


def fwe_plan(cfg: TaskConfig, rng: random.Random, length: int) -> Plan:
    alpha, family = float(cfg.args["alpha"]), FAMILIES["freq_words_extraction"]
    budget = length - family.max_new_tokens
    vocab_size = max(5, budget // 50)  # RULER: max_seq_length // 50; five words at least for a defined top three
    vocab = {"".join(rng.choices(string.ascii_lowercase, k=CODED_WORDLEN)) for _ in range(vocab_size)}
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=CODED_WORDLEN)))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    vocab[0] = "..."  # RULER: treat the top ranked as noise
    order_seed = rng.getrandbits(64)
    lo = 1
    while True:
        counts = fwe_counts(lo, 5, alpha)
        if counts[3] > counts[4]:
            break
        lo += 1

    def render(n: int) -> tuple[str, str, tuple[str, ...]]:
        sampled = [w for w, c in zip(vocab, fwe_counts(n, vocab_size, alpha)) for _ in range(c)]
        random.Random(f"{order_seed}:{n}").shuffle(sampled)
        text = (family.template + family.answer_prefix).format(context=" ".join(sampled), query="")
        cut = text.rfind(family.answer_prefix[:10])
        return text[:cut], text[cut:], tuple(vocab[1:4])

    return Plan(render, lo, max(lo + 1, budget // CODED_WORDLEN), None, "words")

