"""Haystacks and sizing a RULER prompt to a token length.

- `NOISE` is RULER's noise haystack unit, verbatim (niah.py / variable_tracking.py, `type_haystack == 'noise'`).
- `EssayHaystack` replaces RULER's essay haystack (Paul Graham's essays, downloaded by RULER's setup script) with
  the project's offline corpora (validators/corpus.py: Austen by default). As in RULER, the text is whitespace-
  normalised and split into words; a prompt of n units uses the first n words (the corpus repeated when it is
  shorter), cut into sentences, and needles go between sentences.
- Sentences: RULER uses NLTK's Punkt (`sent_tokenize`), whose model is a data download. Here a rule stands in:
  a word ending in `.`, `!` or `?` (closing quotes or brackets may follow) ends a sentence unless it is a common
  abbreviation (Mr., Mrs., Dr., St., …) or a one-letter initial, and unless the next word starts in lower case.
- Sizing: RULER estimates tokens per haystack unit from a probe, then binary-searches the number of units whose
  prompt plus the answer tokens fits the length. `largest_fitting` does the same search but steps by linear
  interpolation between the points it has measured (token counts grow almost linearly in units), so a sample
  costs about four or five tokenizations instead of a dozen or more.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable

from ropeconvert.errors import InputError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr messrs mme mlle prof rev hon capt col gen lt sgt gov esq co inc ltd vs etc viz cf "
    "vol ch fig jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e a.m p.m".split())


def _ends_sentence(word: str, following: str | None) -> bool:
    if not _END.search(word):
        return False
    stem = word.rstrip(".!?\"'\u201d\u2019)]").lstrip("\"'\u201c\u2018([").lower()
    abbreviation = stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha())  # "Mr.", "J."
    if abbreviation and word.rstrip("\"'\u201d\u2019)]").endswith("."):
        return False
    if following is None:
        return True
    first = following.lstrip("\"'\u201c\u2018([")[:1]
    return not first.islower()


def _sentence_ends(words: list[str]) -> list[int]:
    """Indices one past each sentence's last word."""
    return [i + 1 for i, w in enumerate(words) if _ends_sentence(w, words[i + 1] if i + 1 < len(words) else None)]


def split_sentences(text: str) -> list[str]:
    """`text` cut into sentences by the rule above (whitespace normalised to single spaces)."""
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    if words == [""]:
        return []
    bounds = [0] + [e for e in _sentence_ends(words) if e < len(words)] + [len(words)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


class EssayHaystack:
    """The essay haystack: words of the given documents with their sentence ends, found once so that building a
    prompt of n words is slicing (a search builds several)."""

    def __init__(self, documents: Iterable, name: str = "corpus"):
        texts = [d if isinstance(d, str) else d.text for d in documents]
        # RULER: re.sub(r'\s+', " ", essay).split(" ")
        words = re.sub(r"\s+", " ", " ".join(texts)).strip().split(" ")
        if words == [""]:
            raise InputError(f"the {name} haystack holds no text", "pass documents with text in them")
        self.name = name
        self._base = words
        self._copies = 0
        self._extend(1)

    def _extend(self, copies: int) -> None:
        words = self._base * copies  # RULER repeats the essay when a prompt needs more words than it has
        self._starts, pos = [], 0  # character offset of each word in the joined text
        for w in words:
            self._starts.append(pos)
            pos += len(w) + 1
        self._text = " ".join(words)
        self._starts.append(pos)  # one past the end (the joiner's space included)
        self._ends = _sentence_ends(words)
        self._copies = copies

    @property
    def words(self) -> int:
        return len(self._base)

    def _span(self, a: int, b: int) -> str:
        """Words a..b-1 joined by single spaces."""
        return self._text[self._starts[a]:self._starts[b] - 1] if b > a else ""

    def sentence_bounds(self, n: int) -> list[int]:
        """Word indices where the sentences of the first n words start, and n (so sentence k is [b[k], b[k+1]))."""
        if n > len(self._base) * self._copies:
            self._extend(-(-n // len(self._base)))
        inner = self._ends[:bisect.bisect_left(self._ends, n)]  # ends strictly before n
        return [0] + inner + [n]

    def with_inserts(self, n: int, depths: list[int], inserts: list[str]) -> str:
        """RULER's essay context: the first n words cut into S sentences, `inserts[k]` placed before sentence
        int(S · depth_k / 100) (depths sorted with their inserts), pieces joined by one space."""
        bounds = self.sentence_bounds(n)
        count = len(bounds) - 1
        cuts = [0] + sorted(int(count * (d / 100)) for d in depths) + [count]
        pieces = []
        for k in range(1, len(cuts)):
            pieces.append(self._span(bounds[cuts[k - 1]], bounds[cuts[k]]))
            if k - 1 < len(inserts):
                pieces.append(inserts[k - 1])
        return " ".join(pieces)


def token_counter(tokenizer) -> Callable[[str], int]:
    """Tokens of a text as RULER counts them (`text_to_tokens`: no special tokens)."""
    if callable(getattr(tokenizer, "encode", None)):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    raise TypeError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")


class TooShort(Exception):
    """Even the smallest haystack does not fit the budget; `tokens` is what that prompt measured."""

    def __init__(self, tokens: int):
        super().__init__(tokens)
        self.tokens = tokens


def largest_fitting(measure: Callable[[int], int], budget: int, lo: int, probe: int,
                    cap: int | None = None) -> tuple[int, int]:
    """The largest n ≥ lo with measure(n) ≤ budget (n ≤ cap), and measure(n) there.

    measure(lo) first (TooShort when it is over budget), then `probe`, then linear interpolation between the
    tightest fitting and non-fitting points measured (a point within one unit's tokens of the budget is settled by
    measuring its neighbour), bisecting whenever an interpolation fails to halve the bracket. A measure that
    wobbles by a few tokens (tokenizer merges at needle boundaries) still ends on an n that was measured and fits.
    Four or five measures are typical."""
    good, m_good = lo, measure(lo)
    if m_good > budget:
        raise TooShort(m_good)
    m_lo = m_good
    bad = m_bad = None
    n, bisect_next = max(probe, lo + 1), False
    while True:
        if cap is not None and good >= cap:
            return good, m_good
        n = max(n, good + 1)
        if cap is not None:
            n = min(n, cap)
        if bad is not None:
            n = min(n, bad - 1)
        width = None if bad is None else bad - good
        m = measure(n)
        if m <= budget:
            good, m_good = n, m
        else:
            bad, m_bad = n, m
        if bad is not None and bad - good <= 1:
            return good, m_good
        slope = (m_bad - m_good) / (bad - good) if bad is not None else (m_good - m_lo) / max(good - lo, 1)
        if slope > 0 and abs(m - budget) < slope:  # within a unit of the boundary: its neighbour settles it
            n = n + 1 if m <= budget else n - 1
            continue
        if bad is None:  # extrapolate from the overall slope to the predicted largest fit
            n = good + max(1, int((budget - m_good) / max(slope, 1e-9)))
            continue
        if width is not None and (bad - good) * 2 > width:
            bisect_next = True  # the last interpolation did not halve the bracket
        if bisect_next:
            n, bisect_next = (good + bad) // 2, False
        else:
            n = good + int((budget - m_good) / slope) if slope > 0 else (good + bad) // 2
