"""Needle keys and values, and the word pools of RULER's word tasks.

Follows NVIDIA/RULER `scripts/data/synthetic/niah.py` (`generate_random_number`, `generate_random_word`,
`generate_random_uuid`: 7-digit numbers, "adjective-noun" words, version-4 UUIDs drawn from 128 random bits) and
`common_words_extraction.py` (the pool: nouns + adjectives + verbs, deduplicated and sorted). RULER reads these lists
from the `wonderwords` package (its nounlist.txt, adjectivelist.txt and verblist.txt); so does this module, from the
package's own data files, so nothing is downloaded at run time. There is no fallback list: without `wonderwords` the
word tasks refuse with an install hint (a made-up list would not be RULER's).

RULER samples a key from the sorted set of every adjective-noun pair (about 6 million); drawing the adjective and
the noun independently is the same distribution up to the handful of strings two pairs spell alike, without
building that list.
"""
from __future__ import annotations

import random
import uuid
from functools import lru_cache

from ropeconvert.errors import UnsupportedError

NUMBER_DIGITS = 7  # RULER's generate_random_number(num_digits=7)


@lru_cache(maxsize=None)
def _wordlist(name: str) -> tuple[str, ...]:
    try:
        from importlib.resources import files

        import wonderwords
    except ImportError:
        raise UnsupportedError("RULER's word keys and word lists come from the `wonderwords` package, which is "
                               "not installed", "pip install wonderwords") from None
    text = (files(wonderwords) / "assets" / name).read_text(encoding="utf-8")
    # wonderwords' own reader keeps every line, right-stripped; empty lines are dropped here (there are none)
    return tuple(w for w in (line.rstrip() for line in text.splitlines()) if w)


def nouns() -> tuple[str, ...]:
    return _wordlist("nounlist.txt")


def adjectives() -> tuple[str, ...]:
    return _wordlist("adjectivelist.txt")


def verbs() -> tuple[str, ...]:
    return _wordlist("verblist.txt")


@lru_cache(maxsize=None)
def _key_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(sorted(set(adjectives()))), tuple(sorted(set(nouns())))


@lru_cache(maxsize=None)
def common_words_pool() -> tuple[str, ...]:
    """The cwe pool: RULER's `sorted(set(nouns + adjs + verbs))` (each sample then draws from it at random)."""
    return tuple(sorted(set(nouns()) | set(adjectives()) | set(verbs())))


def random_number(rng: random.Random) -> str:
    return str(rng.randint(10 ** (NUMBER_DIGITS - 1), 10 ** NUMBER_DIGITS - 1))


def random_word(rng: random.Random) -> str:
    adjs, nns = _key_parts()
    return f"{rng.choice(adjs)}-{rng.choice(nns)}"


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


GENERATORS = {"numbers": random_number, "words": random_word, "uuids": random_uuid}


def random_value(kind: str, rng: random.Random) -> str:
    """A key or value of RULER's type `kind` (numbers, words or uuids)."""
    return GENERATORS[kind](rng)
